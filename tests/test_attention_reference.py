"""qlab.kernels.attention_reference: the fused int8 attention's definition, against torch.exp / torch.softmax and the
unfused qlab path it will replace (notebook 10's BERT attention, notebook 08's ViT attention)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import intonly
from qlab.bert_attention import MASK_VALUE, additive_mask
from qlab.kernels import attention_reference as A
from qlab.kernels import reference as R


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_exp_is_within_3_ulp_of_torch_exp_and_flushes_below_the_limit():
    x = torch.cat([-torch.rand(200000, generator=torch.Generator().manual_seed(0)) * 87, torch.tensor([0.0, -87.0])])
    assert int(ulps(A.exp_f32(x), torch.exp(x)).max()) <= 3
    assert A.exp_f32(torch.tensor([0.0])).item() == 1.0
    assert not A.exp_f32(torch.tensor([-87.01, -1e4, float("-inf"), MASK_VALUE])).any()


def _round_f32(q: Fraction) -> float:
    """The exact rational ``q`` rounded to the nearest float32 (ties to even); normal range only."""
    if q == 0:
        return 0.0
    e = math.floor(math.log2(abs(q)))
    e += (abs(q) >= Fraction(2) ** (e + 1)) - (abs(q) < Fraction(2) ** e)  # log2 of a float may be off by one
    ulp = Fraction(2) ** (e - 23)
    return float(round(q / ulp) * ulp)  # Fraction.__round__: half to even


def _f32(v: float) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.float32)


def test_fma_f32_rounds_once_where_float64_then_float32_rounds_twice():
    # a·b = 2^-24 - 2^-94 and c = 1 + 2^-23: the exact sum lies just below the float32 tie 1 + 3·2^-24, but rounding it
    # to float64 first lands on the tie, which then goes to the even neighbour 1 + 2^-22.
    a, b, c = _f32(1 + 2**-23), _f32(2**-24 * (1 - 2**-23)), _f32(1 + 2**-23)
    naive = (a.double() * b.double() + c.double()).float()
    exact = _round_f32(Fraction(a.item()) * Fraction(b.item()) + Fraction(c.item()))
    assert exact == 1 + 2**-23 and naive.item() == 1 + 2**-22
    assert A.fma_f32(a, b, c).item() == exact
    assert A.fma_f32(-a, b, -c).item() == -exact


_normal = st.floats(-(2.0**40), 2.0**40, width=32, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) > 2**-40)


@settings(max_examples=300, deadline=None)
@given(_normal, _normal, _normal)
def test_property_fma_f32_is_the_exact_value_rounded_once(a, b, c):
    exact = _round_f32(Fraction(a) * Fraction(b) + Fraction(c))
    assert A.fma_f32(_f32(a), _f32(b), _f32(c)).item() == exact


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_row_sum_16_is_sixteen_lanes_then_folded(S, seed):
    e = torch.rand(3, S, generator=torch.Generator().manual_seed(seed))
    want = []
    for row in e.numpy():
        lanes = np.zeros(16, dtype=np.float32)
        for j, val in enumerate(row):
            lanes[j % 16] = np.float32(lanes[j % 16] + val)
        width = 16
        while width > 1:
            width //= 2
            lanes[:width] = lanes[:width] + lanes[width : 2 * width]
        want.append(lanes[0])
    assert torch.equal(A.row_sum_16(e)[..., 0], torch.tensor(np.array(want)))


def test_softmax_codes_are_within_one_of_torch_softmax_quantized():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 197, generator=g) * 5
    p = A.softmax_u8(logits)
    torch_p = R.quantize_per_tensor(torch.softmax(logits, -1), 1.0 / 255.0, 0, torch.uint8)
    assert int((p.int() - torch_p.int()).abs().max()) <= 1


def _attention_inputs(seed=3, B=2, H=3, T=13, D=16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (B, H, T, D), dtype=torch.uint8, generator=g)
    k = torch.randint(-128, 128, (B, H, T, D), dtype=torch.int8, generator=g)
    v = torch.randint(-128, 128, (B, H, T, D), dtype=torch.int8, generator=g)
    return q, k, v, (0.02, 120, 0.015, -3, 0.03, 2)


@pytest.mark.parametrize("requant", ["float", "fixed"])
def test_float_variant_is_the_unfused_path_with_the_fixed_softmax(requant):
    q, k, v, (sq, zq, sk, zk, sv, zv) = _attention_inputs()
    got = A.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, None, 0.05, 3, torch.uint8, "float", requant)
    logits = R.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, requant)
    p = A.softmax_u8(logits)
    assert torch.equal(got, R.int8_bmm(p, v, 1 / 255, 0, sv, zv, 0.05, 3, torch.uint8, False, requant))
    # and today's unfused path (torch.softmax, then quantize) differs by at most one probability code
    p_torch = R.quantize_per_tensor(torch.softmax(logits, -1), 1 / 255, 0, torch.uint8)
    assert int((p.int() - p_torch.int()).abs().max()) <= 1


@pytest.mark.parametrize("softmax", ["float", "int"])
def test_the_key_padding_mask_equals_attention_over_the_kept_keys(softmax):
    q, k, v, (sq, zq, sk, zk, sv, zv) = _attention_inputs(B=3)
    T = q.shape[-2]
    lengths = [T, 7, 1]
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    bias = additive_mask(mask, 3, T)
    out = A.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, bias, 1.0, 0, torch.float32, softmax, "float")
    for i, n in enumerate(lengths):
        alone = A.int8_attention(q[i : i + 1], k[i : i + 1, :, :n], v[i : i + 1, :, :n], sq, zq, sk, zk, sv, zv,
                                 None, 1.0, 0, torch.float32, softmax, "float")
        assert torch.equal(out[i : i + 1], alone)


def test_the_integer_softmax_is_within_a_few_codes_of_the_float_one():
    q, k, v, (sq, zq, sk, zk, sv, zv) = _attention_inputs(T=197, D=64, B=1)
    acc = R.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.int32, True, "float")
    p_int = intonly.i_softmax(acc, sq * sk)
    p_float = A.softmax_u8(R.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, "float"))
    assert int((p_int.int() - p_float.int()).abs().max()) <= 2


def test_bad_arguments_are_named():
    q, k, v, (sq, zq, sk, zk, sv, zv) = _attention_inputs()
    with pytest.raises(ValueError, match="softmax must be one of"):
        A.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "exp", "float")
    with pytest.raises(TypeError, match="bias must be float32"):
        A.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, torch.zeros(1, dtype=torch.bool), 1.0, 0, torch.float32,
                         "float", "float")
    with pytest.raises(TypeError, match="logits must be float32"):
        A.softmax_u8(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be float32"):
        A.exp_f32(torch.zeros(2, dtype=torch.float16))


# ----------------------------------------------------------------------------------------------
# torch.ops.qlab.int8_attention (qlab/csrc/ops.cpp + softmax.cpp) equals the definition above, on every path

_native = pytest.mark.skipif(
    __import__("qlab.kernels", fromlist=["backend"]).backend() != "native", reason="the C++ extension is not built"
)


@_native
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1), (2, 3, 13, 13, 16, 16), (1, 2, 197, 197, 64, 64),
                                   (2, 1, 5, 40, 7, 9), (1, 1, 70, 3, 5, 2), (1, 1, 100, 1500, 8, 8)])
@pytest.mark.parametrize("softmax", ["float", "int"])
def test_the_kernel_equals_the_reference_on_every_path_and_thread_count(shape, softmax):
    import qlab
    import qlab.kernels as qk

    B, H, T, S, D, Dv = shape
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randint(0, 256, (B, H, T, D), dtype=torch.uint8, generator=g)
    k = torch.randint(-128, 128, (B, H, S, D), dtype=torch.int8, generator=g)
    v = torch.randint(-128, 128, (B, H, S, Dv), dtype=torch.int8, generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[-1, S // 2 + 1 :] = 0
    for bias in (None, additive_mask(mask, B, S) if T == S else None):
        for out_dtype, requant in ((torch.uint8, "float"), (torch.int8, "fixed"), (torch.float32, "float")):
            args = (q, k, v, 0.02, 120, 0.015, -3, 0.03, 2, bias, 0.05, 3, out_dtype, softmax, requant)
            want = A.int8_attention(*args)
            for isa in qk.available_isas():
                for threads in (1, 2):
                    with qlab.scoped(threads=threads), qk.use_isa(isa):
                        got = torch.ops.qlab.int8_attention(*args)
                    assert torch.equal(got, want), (isa, threads, bias is not None, out_dtype)


@_native
@pytest.mark.parametrize("rows", [1, 3, 4, 9])
@pytest.mark.parametrize("S", [1, 7, 16, 33, 197])
def test_the_kernels_exps_equal_the_reference_bit_for_bit_on_every_path(rows, S):
    # the fused op's codes hide most of an exp's low bits; the exps themselves show every one
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(rows * 1000 + S)
    logits = torch.randn(rows, S, generator=g) * torch.tensor([1.0, 10.0, 60.0, 300.0]).repeat(rows)[:rows, None]
    logits[0, ::3] = float("-inf")  # masked keys
    if rows > 2:
        logits[2] = float("-inf")  # a row with nothing kept
    want_e = A.softmax_exps(logits)
    for p_scale in (1.0 / 255.0, 1e-3):
        want = A.softmax_u8(logits, p_scale=p_scale)
        for isa in qk.available_isas():
            with qk.use_isa(isa):
                e, codes = torch.ops.qlab._softmax_rows(logits, p_scale)
            assert torch.equal(e.view(torch.int32), want_e.view(torch.int32)), (isa, p_scale)
            assert torch.equal(codes, want), (isa, p_scale)


@_native
def test_the_softmax_helper_names_bad_arguments():
    with pytest.raises(ValueError, match="logits must be a 2-D float32"):
        torch.ops.qlab._softmax_rows(torch.zeros(3), 1 / 255)
    with pytest.raises(ValueError, match="at least one column"):
        torch.ops.qlab._softmax_rows(torch.zeros(2, 0), 1 / 255)
    with pytest.raises(ValueError, match="p_scale"):
        torch.ops.qlab._softmax_rows(torch.zeros(2, 2), float("nan"))


@_native
@pytest.mark.parametrize("p_scale", [1.0 / 255.0 / 8, 1.0 / 255.0 / 100, 1e-3])
def test_a_calibrated_p_scale_on_every_path(p_scale):
    """P's codes of a finer scale (``Int8Attention``'s calibrated one): the same bits on every path and thread count,
    probabilities above 255 · p_scale clamp at 255, and P·v uses the same scale."""
    import qlab
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 256, (1, 2, 50, 16), dtype=torch.uint8, generator=g)
    k = torch.randint(-128, 128, (1, 2, 90, 16), dtype=torch.int8, generator=g)
    v = torch.randint(-128, 128, (1, 2, 90, 8), dtype=torch.int8, generator=g)
    args = (q, k, v, 0.01, 128, 0.01, 0, 0.03, 2, None, 1.0, 0, torch.float32, "float", "float", p_scale)
    want = A.int8_attention(*args)
    logits = R.int8_bmm(q, k, 0.01, 128, 0.01, 0, 1.0, 0, torch.float32, True, "float")
    p = A.softmax_u8(logits, None, p_scale)
    assert torch.equal(want, R.int8_bmm(p, v, p_scale, 0, 0.03, 2, 1.0, 0, torch.float32, False, "float"))
    exact = torch.softmax(logits.double(), -1) / p_scale
    assert (p == 255).any() == (exact > 255.5).any()  # a clamp happens exactly where the probability is too large
    assert ((p.double() - exact.clamp(max=255)).abs() <= 0.51).all()
    for isa in qk.available_isas():
        for threads in (1, 2):
            with qlab.scoped(threads=threads), qk.use_isa(isa):
                assert torch.equal(torch.ops.qlab.int8_attention(*args), want), (isa, threads)


@_native
@pytest.mark.parametrize("softmax,p_scale", [("float", 1.0 / 127.0), ("int", 1.0 / 255.0)])
def test_seven_bit_codes_on_every_path(softmax, p_scale):
    """q's codes below 128 (and, with p_scale = 1/127, P's too) send the AVX2 path's two products to ``vpmaddubsw``,
    which reads the column sums of the k and v it packed: the same bits as the reference everywhere."""
    import qlab
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(7)
    q = torch.randint(0, 128, (2, 3, 37, 24), dtype=torch.uint8, generator=g)
    k = torch.randint(-128, 128, (2, 3, 53, 24), dtype=torch.int8, generator=g)
    v = torch.randint(-128, 128, (2, 3, 53, 20), dtype=torch.int8, generator=g)
    args = (q, k, v, 0.02, 100, 0.015, -70, 0.03, 90, None, 0.05, 3, torch.uint8, softmax, "float", p_scale)
    want = A.int8_attention(*args)
    for isa in qk.available_isas():
        for threads in (1, 2):
            with qlab.scoped(threads=threads), qk.use_isa(isa):
                assert torch.equal(torch.ops.qlab.int8_attention(*args), want), (isa, threads)


@_native
def test_the_kernel_names_bad_arguments():
    q, k, v, (sq, zq, sk, zk, sv, zv) = _attention_inputs()
    op = torch.ops.qlab.int8_attention
    with pytest.raises(TypeError, match="q must have dtype torch.uint8"):
        op(q.to(torch.int8), k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "float", "float")
    with pytest.raises(ValueError, match="softmax must be one of"):
        op(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "exp", "float")
    with pytest.raises(ValueError, match=r"bias must broadcast to \[..., T, S\]"):
        op(q, k, v, sq, zq, sk, zk, sv, zv, torch.zeros(5), 1.0, 0, torch.float32, "float", "float")
    with pytest.raises(ValueError, match="integer softmax cannot add other float biases"):
        op(q, k, v, sq, zq, sk, zk, sv, zv, torch.full((13,), 0.5), 1.0, 0, torch.float32, "int", "float")
    with pytest.raises(ValueError, match="v must have shape"):
        op(q, k, v[..., :5, :], sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "float", "float")
    for fn in (op, A.int8_attention):
        for bad in (0.0, float("nan"), -1.0):
            with pytest.raises(ValueError, match=r"p_scale must be a positive finite float"):
                fn(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "float", "float", bad)
        with pytest.raises(ValueError, match=r"p_scale must be 1/255 with softmax='int'"):
            fn(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "int", "float", 1e-3)
        with pytest.raises(ValueError, match=r"1 / p_scale overflows float32"):
            fn(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, "float", "float", 1e-40)


@_native
@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40), S=st.integers(1, 70), D=st.integers(1, 20), Dv=st.integers(1, 20),
    zq=st.sampled_from([0, 1, 128, 255]), zk=st.sampled_from([-128, -1, 0, 127]), zv=st.sampled_from([-128, 0, 127]),
    scale=st.sampled_from([1e-4, 0.01, 0.05, 0.3]), softmax=st.sampled_from(["float", "int"]),
    bias_kind=st.sampled_from(["none", "mask", "float", "nan-inf"]), seed=st.integers(0, 2**16),
)
def test_property_kernel_equals_reference(T, S, D, Dv, zq, zk, zv, scale, softmax, bias_kind, seed):
    """Odd sizes, extreme zero points, tiny and large logit scales, float biases, NaN and -inf keys: the C++ op
    equals the definition on every path, at 1 and 2 threads."""
    import qlab
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (2, T, D), dtype=torch.uint8, generator=g)
    k = torch.randint(-128, 128, (2, S, D), dtype=torch.int8, generator=g)
    v = torch.randint(-128, 128, (2, S, Dv), dtype=torch.int8, generator=g)
    bias = None
    if bias_kind != "none":
        drop = torch.rand(2, 1, S, generator=g) < 0.3
        base = torch.zeros(2, 1, S) if bias_kind == "mask" or softmax == "int" else torch.randn(2, T, S, generator=g)
        if bias_kind == "nan-inf":
            nan = float("nan") if softmax == "float" else float("-inf")  # the integer softmax refuses NaN
            bias = torch.where(drop, torch.where(torch.rand(2, 1, S, generator=g) < 0.5, nan, float("-inf")), base)
        else:
            bias = torch.where(drop, torch.tensor(MASK_VALUE), base)
    args = (q, k, v, scale, zq, 0.6 / scale if softmax == "int" and scale > 0.3 else scale * 0.5, zk, 0.02, zv,
            bias, 0.05, 3, torch.uint8, softmax, "float")
    if softmax == "int" and args[3] * args[5] >= 0.69:
        return
    try:
        if softmax == "int":
            intonly.check_sum_fits(float(args[3]) * float(args[5]), S)
    except ValueError:  # a logit scale whose integer sums would wrap int64: both refuse it, with the same words
        for impl in (A.int8_attention, torch.ops.qlab.int8_attention):
            with pytest.raises(ValueError, match="too small for the integer softmax"):
                impl(*args)
        return
    want = A.int8_attention(*args)
    for isa in qk.available_isas():
        for threads in (1, 2):
            with qlab.scoped(threads=threads), qk.use_isa(isa):
                assert torch.equal(torch.ops.qlab.int8_attention(*args), want), (isa, threads)


def _scale_with_bound(S: int, target: float, low: float, high: float) -> float:
    """A logit scale whose integer-softmax row bound 256 S (qb^2 + qc) is near ``target``, checked in [low, high)."""
    from qlab import intonly

    a, b, c = intonly.EXP_COEFFS
    s = math.sqrt(256 * S * (b * b + c / a) / target)
    bound = 256.0 * S * (math.floor(b / s) ** 2 + math.floor(c / (a * s * s)))
    assert low <= bound < high, (S, bound)
    return s


def _edge_scale(S: int) -> float:
    """A logit scale whose integer softmax sums reach [2^62, 2^63): the scalar loop's range, just below the limit."""
    return _scale_with_bound(S, 0.75 * 2.0**63, 2.0**62, 2.0**63)


# The float64 lanes take row bounds below 2^50, the int64 lanes [2^50, 2^62) (ops.cpp): a scale on each side
_BELOW_2_50 = {"f64-edge": (0.9 * 2.0**50, 2.0**49, 2.0**50), "i64-edge": (1.1 * 2.0**50, 2.0**50, 2.0**51)}


@pytest.mark.parametrize("logit_scale", [0.6, 1e-3, 1e-6, "f64-edge", "i64-edge", "edge"])
def test_integer_softmax_lanes_equal_the_scalar_loop(logit_scale):
    """The AVX-512 integer softmax: float64 lanes (exact below a row bound of 2^50, four rows side by side), int64
    lanes that floor through float64 with one exact correction (up to 2^62), the scalar loop above. Rows of 1, 8, 9
    and 300 keys, some or all keys masked, logit scales from near ln 2 (z large) down to the edge where the exps' sum
    nears int64's limit, and on both sides of 2^50: every path equals the reference."""
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(0)
    for S in (1, 8, 9, 300):
        for masked in (None, "some", "all"):
            q = torch.randint(0, 256, (1, 2, 5, 16), dtype=torch.uint8, generator=g)
            k = torch.randint(-128, 128, (1, 2, S, 16), dtype=torch.int8, generator=g)
            v = torch.randint(-128, 128, (1, 2, S, 8), dtype=torch.int8, generator=g)
            keep = (torch.rand(5, S, generator=g) > 0.5) if masked == "some" else torch.full((5, S), masked is None)
            bias = None if masked is None else torch.where(keep, 0.0, float("-inf"))
            if logit_scale == "edge":
                s = _edge_scale(S) ** 0.5
            elif logit_scale in _BELOW_2_50:
                s = _scale_with_bound(S, *_BELOW_2_50[logit_scale]) ** 0.5
            else:
                s = logit_scale**0.5
            args = (q, k, v, s, 0, s, 0, 0.03, 0, bias, 0.05, 3, torch.uint8, "int", "float")
            want = A.int8_attention(*args)
            for isa in qk.available_isas():
                with qk.use_isa(isa):
                    assert torch.equal(torch.ops.qlab.int8_attention(*args), want), (S, masked, isa)


@pytest.mark.parametrize("S", [1, 197])
def test_integer_softmax_refuses_a_logit_scale_whose_sums_would_wrap(S):
    """Below the edge, 255 x a row's exp-sum overflows int64: the reference and the op both refuse the scale."""
    import qlab.kernels as qk

    s = (_edge_scale(S) / 1.5) ** 0.5
    q = torch.zeros(1, 1, 2, 4, dtype=torch.uint8)
    k = torch.zeros(1, 1, S, 4, dtype=torch.int8)
    v = torch.zeros(1, 1, S, 4, dtype=torch.int8)
    args = (q, k, v, s, 0, s, 0, 0.03, 0, None, 0.05, 3, torch.uint8, "int", "float")
    impls = [A.int8_attention] + ([torch.ops.qlab.int8_attention] if qk.backend() == "native" else [])
    for impl in impls:
        with pytest.raises(ValueError, match=rf"too small for the integer softmax over {S} keys"):
            impl(*args)
    A.int8_attention(*args[:3], s * 1.5, *args[4:])  # a little coarser: accepted


@pytest.mark.parametrize("softmax", ["float", "int"])
def test_strided_heads_over_many_blocks_equal_the_reference(softmax):
    """k stored transposed (as the PT2E lowering passes it), v a column slice, q a stride-0 broadcast over one batch
    dimension; 800 keys make several blocks of rows per head, so threads start and finish mid-head (the VNNI and AMX
    paths pack each head's k and v once per thread): every path, 1 and 2 threads, equals the definition."""
    import qlab
    import qlab.kernels as qk

    g = torch.Generator().manual_seed(1)
    B, H, T, S, D, Dv = 2, 3, 150, 800, 16, 24
    q = torch.randint(0, 256, (1, H, T, D), dtype=torch.uint8, generator=g).expand(B, H, T, D)
    k = torch.randint(-128, 128, (B, H, D, S), dtype=torch.int8, generator=g).transpose(-1, -2)
    v = torch.randint(-128, 128, (B, H, S, Dv + 5), dtype=torch.int8, generator=g)[..., 2:Dv + 2]
    assert not (k.is_contiguous() or v.is_contiguous() or q.is_contiguous())
    mask = additive_mask(torch.tensor([[1] * S, [1] * 300 + [0] * (S - 300)]), B, S)
    args = (q, k, v, 0.02, 100, 0.015, -7, 0.03, 3, mask, 0.05, 3, torch.uint8, softmax, "float")
    want = A.int8_attention(*args)
    for isa in qk.available_isas():
        for threads in (1, 2):
            with qlab.scoped(threads=threads), qk.use_isa(isa):
                assert torch.equal(torch.ops.qlab.int8_attention(*args), want), (isa, threads)
