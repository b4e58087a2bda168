"""Cross-layer equalization and bias correction (Nagel, van Baalen, Blankevoort, Welling: "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019), on the EfficientNet-Lite0 of
:mod:`qlab.effnet`. Derived in ``notebooks/11-accuracy-debugging.ipynb``; the numbers are its
equations.

**BatchNorm folding** first (the quantizer folds it too, before it observes the weights), per output channel::

    W'_i = W_i γ_i / σ_i,   b'_i = (b_i − μ_i) γ_i / σ_i + β_i,   σ_i = sqrt(var_i + eps)            (6)

**Equalization.** Two layers with an activation f between them, ``y = W2 f(W1 x + b1)``. If f is *positively
homogeneous*, f(s z) = s f(z) for s > 0 (ReLU is), then for any positive diagonal S::

    W2 f(W1 x + b1) = (W2 S) f(S⁻¹ W1 x + S⁻¹ b1)                                                  (7)

Per-tensor int8 gives a whole weight tensor one scale, so a channel with a small range is quantized coarsely.
With r1_i = max|W1[i, ...]| (output channel i of layer 1) and r2_i = max|W2[:, i, ...]| (input channel i of
layer 2), the choice::

    s_i = sqrt(r1_i r2_i) / r2_i     gives both ranges   r1_i / s_i = r2_i s_i = sqrt(r1_i r2_i)     (8)

**ReLU6 is not positively homogeneous**: relu6(z / s) ≠ relu6(z) / s once z clips. The paper replaces ReLU6
by ReLU (which changes the float model); :func:`equalize` keeps the function exact instead with a clip
per channel::

    relu6(z_i) / s_i = min(relu(z_i / s_i), 6 / s_i)                                              (9)

**Bias correction.** Quantizing W to W̃ = W + ε shifts the expected output by ε E[x]; fitted on calibration
inputs (fp32 activations of the float model) and subtracted from the bias::

    E[W̃ x] − E[W x] = ε E[x]      ⇒      b̃ = b − E_{n,h,w}[ conv(x, ε) ]                          (10)

ε is what the quantizer's own weight observer will do (per tensor or per channel), so the correction
survives PT2E: the X86 quantizer keeps the bias in float. No function here changes the caller's model.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_int, check_tensor
from .effnet import _blocks

__all__ = ["ClampPerChannel", "PAIRS", "fold_bn", "weight_ranges", "relu6_to_relu", "equalize", "weight_error",
           "bias_correct"]

#: The conv -> activation -> conv pairs of an MBConv block that :func:`equalize` can balance.
PAIRS = {"dw->pw": ("_depthwise_conv", "_bn1", "_project_conv"), "expand->dw": ("_expand_conv", "_bn0",
                                                                                 "_depthwise_conv")}


class ClampPerChannel(nn.Module):
    """``min(relu(x), upper)`` with one upper bound per channel: ReLU6 after a layer whose output channel i was
    divided by s_i has ``upper_i = 6 / s_i`` (equation (9))."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        check_tensor("upper", upper)
        if upper.dim() != 1 or not bool((upper > 0).all()):
            raise ValueError("upper must be a 1-D tensor of positive bounds, one per channel")
        self.register_buffer("upper", upper.detach().clone().view(1, -1, 1, 1))

    def forward(self, x):
        return torch.minimum(torch.relu(x), self.upper)


def _plain_blocks(model: nn.Module) -> list:
    blocks = _blocks(model)
    if not getattr(model, "_qlab_plain", False):
        raise ValueError("model must be qlab.effnet.plain(...) of the model (one activation module per call)")
    return blocks


def _bn_pairs(model: nn.Module):
    """(conv, holder, attribute, index) for every conv followed by a BatchNorm: the BN is holder.attribute
    (index None) or holder.attribute[index] (a Sequential(BN, activation))."""
    yield model._conv_stem, model, "_bn0", 0
    for b in model._blocks:
        if hasattr(b, "_expand_conv"):
            yield b._expand_conv, b, "_bn0", 0
        yield b._depthwise_conv, b, "_bn1", 0
        yield b._project_conv, b, "_bn2", None
    yield model._conv_head, model, "_bn1", 0


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of a :func:`qlab.effnet.plain` model with every BatchNorm folded into the conv before it (equation
    (6)); the BNs become ``Identity``. Float output equal to float rounding."""
    _plain_blocks(model)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for conv, holder, attr, idx in _bn_pairs(m):
            bn = getattr(holder, attr) if idx is None else getattr(holder, attr)[idx]
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError(f"model must have a BatchNorm2d after every conv: {attr} holds {type(bn).__name__} "
                                 "(already folded?)")
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight = nn.Parameter(conv.weight * g.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((b - bn.running_mean) * g + bn.bias)
            if idx is None:
                setattr(holder, attr, nn.Identity())
            else:
                getattr(holder, attr)[idx] = nn.Identity()
    m._qlab_folded = True
    return m


def weight_ranges(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``max |w|`` per slice along ``dim`` (0: output channels; 1: input channels): r1 and r2 of equation (8)."""
    check_tensor("weight", weight)
    check_int("dim", dim, 0, weight.dim() - 1)
    w = weight.detach().abs().transpose(0, dim)
    return w.reshape(w.shape[0], -1).amax(1)


def relu6_to_relu(model: nn.Module, where: Iterable[str] = ("dw",)) -> nn.Module:
    """A copy with ReLU6 replaced by ReLU (the paper's recipe) after the depthwise convs (``"dw"``), the expand
    convs (``"expand"``), or stem and head (``"stem_head"``). It changes the float model: measure it."""
    _plain_blocks(model)
    where = set([where] if isinstance(where, str) else where)
    for w in where:
        check_choice("where", w, ["dw", "expand", "stem_head"])
    m = copy.deepcopy(model)
    sites = [(b, "_bn1", "dw") for b in m._blocks] + [(b, "_bn0", "expand") for b in m._blocks]
    sites += [(m, "_bn0", "stem_head"), (m, "_bn1", "stem_head")]
    for holder, attr, tag in sites:
        seq = getattr(holder, attr, None)
        if tag in where and isinstance(seq, nn.Sequential) and isinstance(seq[1], nn.ReLU6):
            seq[1] = nn.ReLU()
    return m


def _balance(conv1: nn.Conv2d, holder: nn.Module, attr: str, conv2: nn.Conv2d) -> torch.Tensor:
    r1 = weight_ranges(conv1.weight, 0)
    depthwise2 = conv2.groups == conv2.in_channels == conv2.out_channels and conv2.groups > 1
    r2 = weight_ranges(conv2.weight, 0 if depthwise2 else 1)  # a depthwise weight's channel i reads input i
    s = torch.sqrt(r1 * r2) / r2
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))  # a dead channel: nothing to balance
    act = getattr(holder, attr)[1]
    if isinstance(act, nn.ReLU):
        pass  # positively homogeneous: equation (7) holds as it is
    elif isinstance(act, nn.ReLU6):
        getattr(holder, attr)[1] = ClampPerChannel(6.0 / s)
    elif isinstance(act, ClampPerChannel):
        act.upper.div_(s.view(1, -1, 1, 1))
    else:
        raise ValueError(f"cannot equalize through {type(act).__name__}: only ReLU, ReLU6 and ClampPerChannel")
    conv1.weight.div_(s.view(-1, 1, 1, 1))
    conv1.bias.div_(s)
    conv2.weight.mul_(s.view(-1, 1, 1, 1) if depthwise2 else s.view(1, -1, 1, 1))
    return s


def equalize(model: nn.Module, pairs: Iterable[str] = ("dw->pw",), iterations: int = 1) -> tuple[nn.Module, dict]:
    """Cross-layer equalization of a :func:`fold_bn` model (equations (7)-(9)): for each block and each pair
    of :data:`PAIRS`, scale output channel i of the first conv by 1/s_i and input channel i of the second by
    s_i. ReLU becomes nothing new, ReLU6 a :class:`ClampPerChannel` (exact). Returns a copy and
    ``{block.pair: s}``."""
    _plain_blocks(model)
    if not getattr(model, "_qlab_folded", False):
        raise ValueError("model must be BatchNorm-folded first (qlab.cle.fold_bn): equation (7) needs the conv's "
                         "output to go straight into the activation")
    names = [pairs] if isinstance(pairs, str) else list(pairs)
    for p in names:
        check_choice("pairs", p, list(PAIRS))
    check_int("iterations", iterations, 1, 50)
    m = copy.deepcopy(model)
    scales = {}
    with torch.no_grad():
        for _ in range(iterations):
            for i, b in enumerate(m._blocks):
                for p in names:
                    c1, attr, c2 = PAIRS[p]
                    if hasattr(b, c1):
                        s = _balance(getattr(b, c1), b, attr, getattr(b, c2))
                        key = f"_blocks.{i}.{p}"
                        scales[key] = scales.get(key, torch.ones_like(s)) * s
    return m, scales


def weight_error(weight: torch.Tensor, weights: str = "per_tensor") -> torch.Tensor:
    """ε = W̃ − W for the int8 weight quantization of :func:`qlab.pt2e.x86_config` (its own observer)."""
    from torchao.quantization.pt2e.prepare import _create_obs_or_fq_from_qspec

    from .pt2e import x86_config

    check_tensor("weight", weight)
    spec = x86_config(weights).weight
    obs = _create_obs_or_fq_from_qspec(spec, {}, False)  # the observer prepare_pt2e builds from this spec
    obs(weight.detach())
    scale, zp = obs.calculate_qparams()
    if scale.numel() == 1:
        wq = torch.fake_quantize_per_tensor_affine(weight, float(scale), int(zp), spec.quant_min, spec.quant_max)
    else:
        wq = torch.fake_quantize_per_channel_affine(weight, scale.float(), zp.int(), spec.ch_axis or 0,
                                                    spec.quant_min, spec.quant_max)
    return (wq - weight).detach()


def bias_correct(model: nn.Module, calibration, weights: str = "per_tensor") -> nn.Module:
    """Empirical bias correction (equation (10)) of every conv and linear of a :func:`fold_bn` model, fitted
    on the ``calibration`` batches with the float model's activations. Returns a corrected copy."""
    _plain_blocks(model)
    if not getattr(model, "_qlab_folded", False):
        raise ValueError("model must be BatchNorm-folded first (qlab.cle.fold_bn): the quantizer sees folded weights")
    check_choice("weights", weights, ["per_channel", "per_tensor"])
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch")
    for i, b in enumerate(batches):
        check_tensor(f"calibration[{i}]", b)
        if b.dim() != 4 or b.shape[1] != model._conv_stem.in_channels:
            raise ValueError(f"calibration[{i}] must be image batches (N, {model._conv_stem.in_channels}, H, W), "
                             f"got {tuple(b.shape)}")
    m = copy.deepcopy(model)
    layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    taps = dict.fromkeys(layers, 0.0)  # Σ over the batches of the per-tap input sums
    count = dict.fromkeys(layers, 0)

    def hook(mod, args, out):
        t, n = _tap_sums(mod, args[0])
        taps[mod] = taps[mod] + t
        count[mod] += n

    handles = [mod.register_forward_hook(hook) for mod in layers]
    try:
        with torch.no_grad():
            for b in batches:
                m(b)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for mod in layers:
            mod.bias.sub_(_expected_error(mod, weight_error(mod.weight, weights), taps[mod] / count[mod]))
    return m


def _tap_sums(mod: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Σ over batch and output positions of the input each kernel tap reads: [C_in, kh, kw] (a Linear: [C_in]),
    and how many (sample, position) pairs that was. Padding zeros included, so E[conv(x, ε)] is exact."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1]).sum(0), x.reshape(-1, x.shape[-1]).shape[0]
    (ph, pw), (sh, sw), (dh, dw) = mod.padding, mod.stride, mod.dilation
    kh, kw = mod.kernel_size
    xp = F.pad(x.sum(0), (pw, pw, ph, ph))  # summed over the batch first: the taps below slice a C×H×W map
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    sums = torch.stack([torch.stack([
        xp[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw].sum((1, 2))
        for j in range(kw)], -1) for i in range(kh)], -2)
    return sums, x.shape[0] * ho * wo


def _expected_error(mod: nn.Module, eps: torch.Tensor, mean_taps: torch.Tensor) -> torch.Tensor:
    """E[conv(x, ε)] per output channel from the mean input under each tap: Σ_{i,kh,kw} ε[o,i,kh,kw] E[x_i(kh,kw)]."""
    if isinstance(mod, nn.Linear):
        return eps @ mean_taps
    g = mod.groups
    per_group_out, per_group_in = eps.shape[0] // g, eps.shape[1]
    m = mean_taps.reshape(g, per_group_in, *mean_taps.shape[1:]).repeat_interleave(per_group_out, 0)
    return (eps * m).sum((1, 2, 3))
