"""Exercises of ``notebooks/04-*.ipynb`` (eager-mode QAT); reference answers in ``notebooks/solutions/04-*.py``."""

from __future__ import annotations

import functools

import torch

from .._env import scoped
from ._core import _call, _close, _pair, exercise

__all__ = []


@exercise("04.1", "the straight-through gradient of fake quantization, equation (2)")
def _check_04_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function ste_grad(x, scale, zero_point, quant_min, quant_max) -> tensor of 0/1"]
    cases = [
        (torch.tensor([-0.7, -0.56, -0.54, -0.2, 0.0, 0.33, 0.96, 1.04, 1.06, 3.0]), 0.1, 5, 0, 15),
        (torch.tensor([-4.3, -4.2, -3.0, 0.1, 3.4, 3.6, 3.8, 10.0]), 0.5, 0, -8, 7),
    ]
    for x, s, z, qmin, qmax in cases:
        xr = x.clone().requires_grad_()
        torch.fake_quantize_per_tensor_affine(xr, s, z, qmin, qmax).sum().backward()
        ref = xr.grad
        got, err = _call(fn, x.clone(), s, z, qmin, qmax)
        if err:
            return [err]
        try:
            got = torch.as_tensor(got).to(torch.float32).reshape(x.shape)
        except Exception:
            return [f"return one gradient per element of x (shape {tuple(x.shape)}), got {got!r}"]
        if torch.equal(got, ref):
            continue
        code = torch.round(x * (1.0 / s)) + z
        args = f"(scale {s}, zero point {z}, codes {qmin}..{qmax})"
        i = int((got != ref).nonzero()[0])
        xi, ci = x[i].item(), int(code[i])
        if bool((got == 1).all()):
            j = int((ref == 0).nonzero()[0])
            return [
                f"the gradient is 0 where the code was clamped: x = {x[j].item():g} gives code {int(code[j])}, "
                f"outside {qmin}..{qmax} {args}, so nothing flows back to it"
            ]
        if bool((got == 0).all()):
            return [
                "rounding's true gradient is 0 almost everywhere; the straight-through estimator treats it as the "
                f"identity inside the range: x = {x[int(ref.nonzero()[0])].item():g} should get gradient 1"
            ]
        lo, hi = s * (qmin - z), s * (qmax - z)
        if torch.equal(got, ((x >= lo) & (x <= hi)).float()):
            return [
                f"equation (2) tests the rounded code, not x against [{lo:g}, {hi:g}]: x = {xi:g} gives "
                f"round({xi:g} / {s}) + {z} = {ci}, {'inside' if ref[i] else 'outside'} {qmin}..{qmax}, "
                f"so its gradient is {int(ref[i])}"
            ]
        if torch.equal(got, ((code > qmin) & (code < qmax)).float()):
            return [f"qmin and qmax are valid codes: x = {xi:g} gives code {ci}, not clamped, gradient 1"]
        nozp = torch.round(x * (1.0 / s))
        if torch.equal(got, ((nozp >= qmin) & (nozp <= qmax)).float()):
            return [
                f"add the zero point before comparing with the range: the code of x = {xi:g} is "
                f"round(x / scale) + {z} = {ci}"
            ]
        return [f"x = {xi:g} {args} gives code {ci}, so its gradient is {int(ref[i])}; you gave {got[i].item():g}"]
    return []


QAT_STATE_04 = ("weights", "bn_affine", "bn_running_stats", "activation_qparams", "weight_qparams")


@functools.lru_cache(maxsize=1)
def _frozen_qat_step() -> frozenset:
    """Which of QAT_STATE_04 change in a training step after disable_observer and freeze_bn_stats (a real step)."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq

    from ..models import DigitsCNN

    with scoped(seed=0):
        with scoped(engine="x86"):
            model = DigitsCNN(widths=(2, 2, 2, 2)).train()
            model = tq.fuse_modules_qat(model, model.fuse_spec())
            model.qconfig = tq.get_default_qat_qconfig("x86")
            model = tq.prepare_qat(model)
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))

        def step():  # plain SGD by hand (torch.optim's first use imports torch._dynamo: seconds)
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad

        step()  # observers on: the ranges are set
        model.apply(tq.disable_observer)
        model.apply(nniqat.freeze_bn_stats)
        block = model.features[0]

        def state():
            return {
                "weights": block.weight,
                "bn_affine": torch.cat([block.bn.weight, block.bn.bias]),
                "bn_running_stats": torch.cat([block.bn.running_mean, block.bn.running_var]),
                "activation_qparams": torch.cat(
                    [block.activation_post_process.scale, block.activation_post_process.zero_point.float()]
                ),
                "weight_qparams": torch.cat(
                    [block.weight_fake_quant.scale, block.weight_fake_quant.zero_point.float()]
                ),
            }

        before = {k: v.detach().clone() for k, v in state().items()}
        step()
        return frozenset(k for k, v in state().items() if not torch.equal(v, before[k]))


@exercise("04.2", "what still changes in a QAT step after disable_observer and freeze_bn_stats")
def _check_04_2(answer) -> list[str]:
    if answer is None or isinstance(answer, str) or not all(isinstance(a, str) for a in answer):
        return [f"answer with a set of names from {list(QAT_STATE_04)}, got {answer!r}"]
    got = set(answer)
    unknown = got - set(QAT_STATE_04)
    if unknown:
        return [f"unknown name(s) {sorted(unknown)}: use names from {list(QAT_STATE_04)}"]
    truth = _frozen_qat_step()
    why = {
        "weights": "the weights keep training: the point of the last steps is to train them against fixed qparams",
        "bn_affine": "freeze_bn_stats freezes BatchNorm's statistics only; its gamma and beta are parameters, "
        "and the optimizer keeps training them",
        "bn_running_stats": "freeze_bn_stats makes BatchNorm normalise with its running mean and variance and stop "
        "updating them",
        "activation_qparams": "disable_observer stops the moving-average update, so scale and zero point stay as "
        "they are",
        "weight_qparams": "model.apply(disable_observer) reaches every fake-quantize module, the weights' too: their "
        "scales freeze while the weights keep training",
    }
    problems = [f"missing {k}: {why[k]}" for k in QAT_STATE_04 if k in truth - got]
    problems += [f"not {k}: {why[k]}" for k in QAT_STATE_04 if k in got - truth]
    return problems


@exercise("04.3", "(scale, zero_point) of the default x86 QAT activation fake-quantizer after one batch in [-0.8, 1.8]")
def _check_04_3(answer) -> list[str]:
    import torch.ao.quantization as tq

    (s, z), bad = _pair(answer, "(scale, zero_point)")
    if bad:
        return [bad]
    fq = tq.get_default_qat_qconfig("x86").activation()
    fq(torch.tensor([-0.8, 0.3, 1.8]))
    ref_s, ref_z = float(fq.scale), int(fq.zero_point)
    lo, hi = -0.8, 1.8
    full_s = (hi - lo) / 255
    if _close(s, ref_s, 1e-4) and z == ref_z:
        return []
    if _close(s, full_s, 1e-4):
        return [
            f"reduce_range=True halves the custom range quant_min=0, quant_max=255 to codes "
            f"{fq.quant_min}..{fq.quant_max} (section 2): the scale is (hi - lo) / {fq.quant_max - fq.quant_min}"
        ]
    if _close(s, (hi - lo) / 128, 1e-4):
        return [
            f"the codes are {fq.quant_min}..{fq.quant_max}: {fq.quant_max - fq.quant_min} steps between them, not 128"
        ]
    if not _close(s, ref_s, 1e-4):
        return [f"the scale should be (hi - lo) / (qmax - qmin) = {ref_s:.6g}, you gave {s:.6g}"]
    return [f"the zero point is qmin - round(lo / scale) = {ref_z}, you gave {z:g}"]
