"""Lower PT2E's ``dequantize -> matmul -> quantize`` to qlab's int8 kernels: the maintainer's suggestion, carried out.
Taught in ``notebooks/08-vit-attention-int8.ipynb``.

After ``convert_pt2e`` a quantized op is a *pattern* in a float graph::

    a_q = quantize_per_tensor(a, sa, za)            uint8 codes
    b_q = quantize_per_tensor(b, sb, zb)
    y   = matmul(dequantize(a_q, sa, za), dequantize(b_q, sb, zb))       float32
    [y  = transpose / reshape / view / permute / dropout(p=0)(y) ...]
    y_q = quantize_per_tensor(y, so, zo)            (when the next op is quantized)

Inductor fuses such patterns into its own kernels; :func:`lower_to_qlab` rewrites
them into calls of ``torch.ops.qlab.int8_bmm`` / ``int8_attention`` / ``int8_linear_packed`` instead, in the
``GraphModule`` itself (which then runs eagerly, or under ``torch.compile``, as the
ops have fake kernels). Five rewrites, each counted in the returned report:

* ``scale_mul`` -- ``quantize(x * c, s, z)`` becomes ``quantize(x, s / c, z)``
  (``c > 0`` a Python number, ``x * c`` used only there): the same codes,
  bit for bit when ``c`` is a power of two (attention's ``head_dim ** -0.5``
  for head_dim 16 or 64); the multiply disappears.
* ``b_int8`` -- ``int8_bmm`` wants an int8 right operand; a uint8 quantize
  ``(z, 0..255)`` and its dequantizes become int8 ``(z - 128, -128..127)``:
  every code minus 128, the same real values.
* ``matmul`` -- ``matmul``/``bmm`` of two per-tensor dequantizes with equal
  batch dimensions becomes ``int8_bmm``; float32 out, or (``matmul_requantized``)
  requantized in the kernel when a chain of view-like ops ends in a quantize,
  which the codes then pass through instead.
* ``attention`` -- (``softmax="float"``) two such ``int8_bmm`` around a last-dim softmax whose output is quantized
  to uint8 with zero point 0 become one fused ``int8_attention`` (notebook 12): the float scores never reach
  memory; P's codes are ``round(softmax · 1/s_P)`` from qlab's fixed-order ``exp``, within an ULP or two of
  ``torch.softmax``'s, so a code can differ where a probability sits on a rounding boundary.
* ``linear`` -- ``linear(dequantize(x_q), dequantize_per_channel(w_q), bias)`` with
  symmetric int8 weights becomes ``int8_linear_packed`` on the weight packed once
  (``packed=False``: ``int8_linear``; float32 out; requantized when a quantize follows
  directly).

Two clean-ups make the rewritten graph quick to run eagerly:

* ``quantize`` -- ``quantized_decomposed.quantize_per_tensor`` (five float32 passes in
  Python) becomes ``qlab::quantize_per_tensor`` (qlab's one-pass kernel,
  the same codes);
* ``dropout`` -- ``dropout(p=0)`` / ``dropout(train=False)`` nodes (identities) are removed.

Anything else is left as it was (the report's ``skipped`` says why).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ._checks import check_choice
from .primitives import INT_RANGES

__all__ = ["lower_to_qlab", "count_targets", "uint8_to_int8"]

aten = torch.ops.aten

# ops that only move codes around: they commute with a per-tensor quantize
_VIEWLIKE = {
    aten.transpose.int,
    aten.permute.default,
    aten.reshape.default,
    aten.view.default,
    aten.clone.default,
    aten.contiguous.default,
}


def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 -- registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


def uint8_to_int8(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes minus 128 as int8 (zero point minus 128: the same real values)."""
    return (codes.to(torch.int16) - 128).to(torch.int8)


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target == target


def _dq_per_tensor(node):
    """``(codes, scale, zero_point, dtype)`` if ``node`` is a static per-tensor dequantize, else None."""
    qd = _qd()
    if not _is(node, qd.dequantize_per_tensor.default):
        return None
    codes, scale, zp, _lo, _hi, dtype = node.args[:6]
    if not (isinstance(scale, float) and isinstance(zp, int)) or dtype not in (torch.uint8, torch.int8):
        return None
    return codes, scale, zp, dtype


def _shape(node):
    """The shape recorded by torch.export (as strings: batch sizes are symbolic); quantize and
    dequantize nodes inserted by convert_pt2e have none, so look through them to their input."""
    qd = _qd()
    passthrough = (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default)
    while isinstance(node, fx.Node):
        val = node.meta.get("val")
        if val is not None and hasattr(val, "shape"):
            return tuple(str(s) for s in val.shape)
        if node.op == "call_function" and node.target in passthrough:
            node = node.args[0]
            continue
        return None
    return None


def _is_dropout_identity(node) -> bool:
    if not _is(node, aten.dropout.default):
        return False
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return p == 0.0 or train is False


def _chain_to_quantize(node):
    """Follow single-user view-like ops (and identity dropouts) from ``node``; return
    ``(chain, q)`` when they end in a static per-tensor quantize, else None."""
    qd = _qd()
    chain, cur = [], node
    while len(cur.users) == 1:
        (user,) = cur.users
        if _is(user, qd.quantize_per_tensor.default):
            scale, zp, lo, hi, dtype = user.args[1:6]
            if isinstance(scale, float) and isinstance(zp, int) and dtype in (torch.uint8, torch.int8):
                return chain, user
            return None
        if (user.op == "call_function" and user.target in _VIEWLIKE and user.args[0] is cur) or (
            _is_dropout_identity(user) and user.args[0] is cur
        ):
            chain.append(user)
            cur = user
            continue
        return None
    return None


def _fold_scale_mul(gm, report) -> None:
    qd = _qd()
    for q in list(gm.graph.nodes):
        if not _is(q, qd.quantize_per_tensor.default):
            continue
        mul = q.args[0]
        if not _is(mul, aten.mul.Tensor) or len(mul.users) != 1:
            continue
        x, c = mul.args[:2]
        if isinstance(x, (int, float)) and isinstance(c, fx.Node):
            x, c = c, x
        scale = q.args[1]
        if not (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 and isinstance(scale, float)):
            continue
        q.args = (x, scale / float(c), *q.args[2:])
        gm.graph.erase_node(mul)
        report["scale_mul"] += 1


def _to_int8(gm, dq_node, report):
    """Make the right operand of a matmul int8: rewrite its uint8 quantize (and every dequantize of it),
    or insert :func:`uint8_to_int8`. Returns ``(codes_node, zero_point)``."""
    qd = _qd()
    codes, scale, zp, dtype = _dq_per_tensor(dq_node)
    if dtype == torch.int8:
        return codes, zp
    report["b_int8"] += 1
    q = codes
    if _is(q, qd.quantize_per_tensor.default) and all(
        _is(u, qd.dequantize_per_tensor.default) and u.args[0] is q for u in q.users
    ):
        for n in [q, *q.users]:
            args = list(n.args)
            args[2], args[3], args[4], args[5] = args[2] - 128, -128, 127, torch.int8
            n.args = tuple(args)
        return q, zp - 128
    with gm.graph.inserting_before(dq_node):
        conv = gm.graph.call_function(uint8_to_int8, (codes,))
    return conv, zp - 128


def _lower_matmuls(gm, requant, report) -> None:
    ops = torch.ops.qlab
    for mm in list(gm.graph.nodes):
        if not (_is(mm, aten.matmul.default) or _is(mm, aten.bmm.default)):
            continue
        a, b = mm.args[:2]
        da, db = _dq_per_tensor(a), _dq_per_tensor(b)
        if da is None or db is None:
            report["skipped"].append(f"{mm.name}: an operand is not a static per-tensor dequantize")
            continue
        sa_shape, sb_shape = _shape(a), _shape(b)
        if (
            sa_shape is None
            or sb_shape is None
            or len(sa_shape) != len(sb_shape)
            or len(sa_shape) < 3
            or sa_shape[:-2] != sb_shape[:-2]
        ):
            report["skipped"].append(f"{mm.name}: batch dimensions differ or are unknown ({sa_shape} @ {sb_shape})")
            continue
        a_codes, sa, za, _ = da
        b_codes, zb = _to_int8(gm, b, report)
        sb = db[1]
        found = _chain_to_quantize(mm)
        with gm.graph.inserting_before(mm):
            if found is None:
                new = gm.graph.call_function(
                    ops.int8_bmm.default, (a_codes, b_codes, sa, za, sb, zb, 1.0, 0, torch.float32, False, requant)
                )
                new.meta = dict(mm.meta)
                mm.replace_all_uses_with(new)
                gm.graph.erase_node(mm)
                report["matmul"] += 1
                continue
            chain, q = found
            so, zo, _lo, _hi, qdtype = q.args[1:6]
            new = gm.graph.call_function(
                ops.int8_bmm.default, (a_codes, b_codes, sa, za, sb, zb, so, zo, qdtype, False, requant)
            )
        cur = new
        for view in chain:  # replay the view-like ops on the codes (identity dropouts vanish)
            if _is_dropout_identity(view):
                continue
            with gm.graph.inserting_after(cur):
                cur = gm.graph.call_function(view.target, (cur, *view.args[1:]), dict(view.kwargs))
        q.replace_all_uses_with(cur)
        for n in [q, *reversed(chain), mm]:
            gm.graph.erase_node(n)
        report["matmul_requantized"] += 1


def _fuse_attention(gm, requant, report) -> None:
    """``int8_bmm(q, kᵀ) -> softmax(-1) -> quantize(uint8, zero point 0) -> int8_bmm(P, v)`` (what ``_lower_matmuls``
    leaves of an attention) becomes one ``int8_attention`` with the float softmax and ``p_scale`` = P's scale."""
    qd, ops = _qd(), torch.ops.qlab
    gm.graph.eliminate_dead_code()  # the dequantizes the matmul rewrite left unused
    for sm in list(gm.graph.nodes):
        if not _is(sm, aten.softmax.int) and not _is(sm, aten._softmax.default):
            continue
        scores = sm.args[0]
        if not _is(scores, ops.int8_bmm.default):
            continue
        why = None
        qa = scores.args
        rank = len(_shape(scores) or ())
        dim = sm.args[1]
        users, drops = list(sm.users), []
        while len(users) == 1 and _is_dropout_identity(users[0]):
            drops.append(users[0])
            users = list(users[0].users)
        pq = users[0] if len(users) == 1 and _is(users[0], qd.quantize_per_tensor.default) else None
        pv = next(iter(pq.users)) if pq is not None and len(pq.users) == 1 else None
        if len(scores.users) != 1 or qa[6:9] != (1.0, 0, torch.float32) or qa[9]:
            why = "the scores are not a float32 int8_bmm used only by the softmax"
        elif dim not in (-1, rank - 1) or (_is(sm, aten._softmax.default) and sm.args[2]):
            why = f"softmax over dim {dim}, not the last"
        elif pq is None or tuple(pq.args[2:6]) != (0, 0, 255, torch.uint8) or not isinstance(pq.args[1], float):
            why = "the probabilities are not quantized to uint8 with zero point 0"
        elif not _is(pv, ops.int8_bmm.default) or pv.args[0] is not pq or pv.args[9]:
            why = "the probabilities do not feed an int8_bmm as its left operand"
        if why is not None:
            report["skipped"].append(f"{sm.name}: not fused into int8_attention ({why})")
            continue
        pa = pv.args
        with gm.graph.inserting_before(pv):
            k = gm.graph.call_function(aten.transpose.int, (qa[1], -2, -1))  # the codes of k, [..., S, D]
            new = gm.graph.call_function(
                ops.int8_attention.default,
                (qa[0], k, pa[1], qa[2], qa[3], qa[4], qa[5], pa[4], pa[5], None, pa[6], pa[7], pa[8], "float",
                 requant, pq.args[1]),
            )
        new.meta = dict(pv.meta)
        pv.replace_all_uses_with(new)
        for n in (pv, pq, *reversed(drops), sm, scores):
            gm.graph.erase_node(n)
        report["attention"] += 1


def _lower_linears(gm, requant, report, packed) -> None:
    qd = _qd()
    ops = torch.ops.qlab
    for lin in list(gm.graph.nodes):
        if not _is(lin, aten.linear.default):
            continue
        x, w = lin.args[:2]
        bias = lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias")
        dx = _dq_per_tensor(x)
        if dx is None:
            report["skipped"].append(f"{lin.name}: the input is not a static per-tensor dequantize")
            continue
        if not _is(w, qd.dequantize_per_channel.default) or w.args[3] != 0:
            report["skipped"].append(f"{lin.name}: the weight is not dequantize_per_channel along axis 0")
            continue
        w_codes, w_scale, w_zp = w.args[:3]
        if not all(isinstance(n, fx.Node) and n.op == "get_attr" for n in (w_codes, w_scale, w_zp)):
            report["skipped"].append(f"{lin.name}: the weight is not a constant")
            continue
        if bool(_attr(gm, w_zp.target).ne(0).any()) or _attr(gm, w_codes.target).dtype != torch.int8:
            report["skipped"].append(f"{lin.name}: the weight is not symmetric int8")
            continue
        scale_t = _attr(gm, w_scale.target)
        if scale_t.dtype != torch.float32:
            name = f"{w_scale.target}_f32"
            gm.register_buffer(name, scale_t.to(torch.float32))
            with gm.graph.inserting_before(lin):
                w_scale = gm.graph.get_attr(name)
        x_codes, sx, zx, _ = dx
        users = list(lin.users)
        q = users[0] if len(users) == 1 and _is(users[0], qd.quantize_per_tensor.default) else None
        if q is not None and isinstance(q.args[1], float) and isinstance(q.args[2], int):
            out = (q.args[1], q.args[2], q.args[5])
        else:
            q, out = None, (1.0, 0, torch.float32)
        with gm.graph.inserting_before(lin):
            if packed:  # the weight packed once, here: a constant of the graph beside the codes
                codes = _attr(gm, w_codes.target)
                name = f"{w_codes.target}_packed".replace(".", "_")
                if not hasattr(gm, name):
                    gm.register_buffer(name, ops.pack_linear_weight(codes))
                new = gm.graph.call_function(
                    ops.int8_linear_packed.default,
                    (x_codes, gm.graph.get_attr(name), codes.shape[0], w_scale, bias, sx, zx, out[0], out[1], out[2],
                     False, None, requant),
                )
            else:
                new = gm.graph.call_function(
                    ops.int8_linear.default,
                    (x_codes, w_codes, w_scale, bias, sx, zx, out[0], out[1], out[2], False, requant),
                )
        if q is None:
            new.meta = dict(lin.meta)
            lin.replace_all_uses_with(new)
            gm.graph.erase_node(lin)
            report["linear"] += 1
        else:
            q.replace_all_uses_with(new)
            gm.graph.erase_node(q)
            gm.graph.erase_node(lin)
            report["linear_requantized"] += 1


def _fast_quantize(gm, report) -> None:
    import qlab.kernels  # noqa: F401 -- registers torch.ops.qlab.*

    qd = _qd()
    full = INT_RANGES
    for q in list(gm.graph.nodes):
        if not _is(q, qd.quantize_per_tensor.default):
            continue
        x, scale, zp, lo, hi, dtype = q.args[:6]
        if isinstance(scale, float) and isinstance(zp, int) and full.get(dtype) == (lo, hi):
            with gm.graph.inserting_before(q):
                new = gm.graph.call_function(torch.ops.qlab.quantize_per_tensor.default, (x, scale, zp, dtype))
            new.meta = dict(q.meta)
            q.replace_all_uses_with(new)
            gm.graph.erase_node(q)
            report["quantize"] += 1


def _drop_dropouts(gm, report) -> None:
    for n in list(gm.graph.nodes):
        if _is_dropout_identity(n):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
            report["dropout"] += 1


def lower_to_qlab(
    gm: fx.GraphModule,
    *,
    matmul: bool = True,
    linear: bool = True,
    fold_scale_mul: bool = True,
    cleanup: bool = True,
    requant: str = "float",
    packed: bool = True,
    softmax: str = "float",
) -> tuple[fx.GraphModule, dict]:
    """Rewrite ``gm`` (a ``convert_pt2e`` result) in place; return ``(gm, report)``.

    ``report`` counts each rewrite (see the module docstring) and lists what was ``skipped``.
    ``cleanup``: the two clean-ups. ``requant``: the rounding of requantized outputs,
    ``"float"`` (PyTorch's) or ``"fixed"`` (integer-only). ``packed``: linears become ``int8_linear_packed`` on a
    weight packed once here (a buffer of ``gm``; notebook 12), else ``int8_linear`` (packing inside every call).
    ``softmax``: ``"float"`` fuses each lowered attention (``int8_bmm -> softmax -> quantize -> int8_bmm``) into one
    ``int8_attention`` call with its fixed-order float softmax and P's scale from the graph (notebook 12);
    ``"torch"`` keeps the two ``int8_bmm`` calls around ``torch.softmax`` (notebook 08).
    """
    if not isinstance(packed, bool):
        raise TypeError(f"packed must be a bool, got {type(packed).__name__}")
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"gm must be a torch.fx.GraphModule (the result of convert_pt2e), got {type(gm).__name__}")
    check_choice("requant", requant, ["float", "fixed"])
    check_choice("softmax", softmax, ["float", "torch"])
    import qlab.kernels  # noqa: F401 -- registers torch.ops.qlab.*

    report = {
        "scale_mul": 0,
        "b_int8": 0,
        "matmul": 0,
        "matmul_requantized": 0,
        "attention": 0,
        "linear": 0,
        "linear_requantized": 0,
        "quantize": 0,
        "dropout": 0,
        "skipped": [],
    }
    if fold_scale_mul:
        _fold_scale_mul(gm, report)
    if matmul:
        _lower_matmuls(gm, requant, report)
        if softmax == "float":
            _fuse_attention(gm, requant, report)
    if linear:
        _lower_linears(gm, requant, report, packed)
    if cleanup:
        _fast_quantize(gm, report)
        _drop_dropouts(gm, report)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm, report


def count_targets(gm: fx.GraphModule) -> dict[str, int]:
    """How many call_function nodes call each target (``"aten.matmul.default"``, ``"qlab.int8_bmm.default"``, ...)."""
    out: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is not operator.getitem:
            key = (
                str(n.target)
                if not hasattr(n.target, "__name__") or isinstance(n.target, torch._ops.OpOverload)
                else n.target.__name__
            )
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
