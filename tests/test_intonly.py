"""qlab.intonly: the integer-only softmax, GELU and LayerNorm (I-BERT), against float PyTorch as the oracle; the
error bounds asserted here are the ones the docstrings and notebook 12 state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import intonly as I
from qlab.bert_attention import additive_mask


def poly_error(coeffs, lo, hi, fn) -> float:
    """The polynomial's own error on [lo, hi], before any integer rounding."""
    a, b, c = coeffs
    p = torch.linspace(lo, hi, 200001, dtype=torch.float64)
    return float((a * (p + b) ** 2 + c - fn(p)).abs().max())


EXP_POLY_ERR = poly_error(I.EXP_COEFFS, -math.log(2), 0.0, torch.exp)


def test_the_polynomials_are_the_papers_fits():
    assert 1e-3 < EXP_POLY_ERR < 3e-3  # second-order fit of exp on (-ln2, 0]
    # erf's fit is worst at 0+ (a·b² + 1 = 0.096), where GELU multiplies it by x/2
    assert abs(poly_error(I.ERF_COEFFS, 0.0, 1.769, torch.erf) - 0.0963) < 1e-3


def test_isqrt_is_floor_sqrt_exhaustively_to_2_16():
    n = torch.arange(0, 1 << 16)
    assert torch.equal(I.isqrt(n), torch.tensor([math.isqrt(int(v)) for v in n]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=32))
def test_isqrt_is_floor_sqrt_up_to_2_62(values):
    assert I.isqrt(torch.tensor(values)).tolist() == [math.isqrt(v) for v in values]


@pytest.mark.parametrize("scale", [2**-4, 2**-8, 1 / 50, 1e-4])
def test_i_exp_error_is_the_polynomials_plus_two_steps(scale):
    q = torch.arange(-min(int(12 / scale), 200000), 1)
    e, s = I.i_exp(q, scale)
    err = (e.double() * s - torch.exp(q.double() * scale)).abs().max().item()
    assert err <= EXP_POLY_ERR + 2 * scale, (err, EXP_POLY_ERR)


def test_i_softmax_matches_torch_softmax_for_attention_logits():
    g = torch.Generator().manual_seed(0)
    scale = 2e-4  # logits straight from int8_bmm's int32 accumulator: s_q · s_k is small
    q = torch.randint(-60000, 60000, (4, 3, 17, 197), generator=g)
    p = I.i_softmax(q, scale)
    ref = torch.softmax(q.double() * scale, -1)
    assert p.dtype == torch.uint8
    assert (p.double() / 255 - ref).abs().max() <= 1.0 / 255  # rounding (1/2 code) + the exp fit
    sums = p.sum(-1, dtype=torch.int64)
    assert int((sums - 255).abs().max()) <= 197 // 2 + 1


def test_i_softmax_with_the_key_padding_mask_equals_softmax_over_the_kept_keys():
    g = torch.Generator().manual_seed(1)
    B, H, T = 3, 2, 11
    q = torch.randint(-30000, 30000, (B, H, T, T), generator=g)
    lengths = [11, 6, 1]
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    bias = additive_mask(mask, B, T)  # [B, 1, 1, T]: 0 or -inf
    p = I.i_softmax(q, 1e-4, bias)
    for i, n in enumerate(lengths):
        assert torch.equal(p[i, ..., :n], I.i_softmax(q[i, ..., :n], 1e-4))
        assert not p[i, ..., n:].any()  # masked keys: exactly 0


def test_a_fully_masked_row_is_zeros():
    bias = torch.full((1, 4), float("-inf"))
    assert not I.i_softmax(torch.zeros(2, 4, dtype=torch.int32), 0.01, bias).any()


@pytest.mark.parametrize("scale", [0.01, 0.05])
def test_i_gelu_error(scale):
    q = torch.arange(int(-8 / scale), int(8 / scale))
    out, s = I.i_gelu(q, scale)
    err = (out.double() * s - torch.nn.functional.gelu(q.double() * scale)).abs().max().item()
    assert err < 0.025, err


@settings(max_examples=50, deadline=None)
@given(st.integers(8, 400), st.integers(50, 100000), st.integers(0, 2**31 - 1))
def test_i_layernorm_matches_layer_norm(C, spread, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-spread, spread + 1, (3, C), generator=g)
    got = I.i_layernorm(q, frac_bits=8).double() / 256
    ref = torch.nn.functional.layer_norm(q.double(), (C,))
    # floors of the mean, variance and square root: a relative error of about 1/σ, plus one output step
    sigma = q.double().std(-1, unbiased=False, keepdim=True)
    assert ((got - ref).abs() <= ref.abs() * 2 / sigma + 2 / sigma + 1 / 256).all()


def test_i_layernorm_of_a_constant_row_is_zero():
    assert not I.i_layernorm(torch.full((2, 5), 7)).any()


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="q must hold integer codes"):
        I.i_exp(torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="scale must be below ln 2"):
        I.i_exp(torch.zeros(3, dtype=torch.int32), 0.7)
    with pytest.raises(ValueError, match="q must be <= 0"):
        I.i_exp(torch.tensor([1]), 0.1)
    with pytest.raises(ValueError, match="codes of magnitude below 2\\*\\*31"):
        I.i_softmax(torch.tensor([2**40]), 0.1)
    with pytest.raises(ValueError, match="integer softmax cannot add other float biases"):
        I.i_softmax(torch.zeros(1, 3, dtype=torch.int32), 0.1, torch.tensor([0.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="n must be >= 0"):
        I.isqrt(torch.tensor([-1]))
    with pytest.raises(ValueError, match="frac_bits must be"):
        I.i_layernorm(torch.zeros(1, 3, dtype=torch.int32), frac_bits=40)
    with pytest.raises(TypeError, match="scale must be one float"):
        I.i_gelu(torch.zeros(2, dtype=torch.int32), torch.tensor([0.1, 0.2]))
