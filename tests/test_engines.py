"""qlab.engines: the x86 engine's FBGEMM/oneDNN rule, measured in oneDNN's log and applied to models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qlab
from qlab import engines


def test_onednn_kernels_reads_onednns_log():
    """The x86 engine's convolution shows up in oneDNN's log (on AMX CPUs as an AMX kernel); FBGEMM's never does."""
    x86 = engines.onednn_kernels("x86")
    assert engines.onednn_kernels("fbgemm") == []
    assert all(isinstance(kind, str) and isinstance(impl, str) for kind, impl in x86)
    onednn = engines.onednn_kernels("onednn")
    assert any(kind == "convolution" for kind, _ in onednn)  # the onednn engine always runs oneDNN
    if qlab.env_info().amx:
        assert any(kind == "convolution" and "amx" in impl for kind, impl in x86)
    with pytest.raises(ValueError, match="engine must be one of"):
        engines.onednn_kernels("qnnpack")


def test_the_rule_matches_what_onednn_logs():
    """x86_route's prediction for each probe layer is what oneDNN's log shows (cpuinfo decides VNNI)."""
    vnni = "avx512_vnni" in qlab._env.cpu_flags()
    layers = {"linear": nn.Linear(256, 256), "conv": nn.Conv2d(64, 64, 3),
              "depthwise": nn.Conv2d(128, 128, 3, groups=128)}
    channels = {"linear": 256, "conv": 64, "depthwise": 128}
    measured = engines.engine_kernels("x86", [(k, channels[k]) for k in layers])
    for k, layer in layers.items():
        assert measured[f"{k} {channels[k]} ch"].split()[0] == engines.x86_route(layer, vnni), (k, measured)


def test_x86_routing_counts_multiply_adds_per_library():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(2, 3, 8, 8)
    r = engines.x86_routing(net, x, vnni=True)
    conv1 = 2 * 8 * 6 * 6 * 3 * 9
    dw = 2 * 8 * 4 * 4 * 9
    fc = 2 * 10 * 128
    assert r["oneDNN"] == {"macs": conv1 + dw, "layers": 2} and r["FBGEMM"] == {"macs": fc, "layers": 1}
    assert r["onednn_share"] == pytest.approx((conv1 + dw) / (conv1 + dw + fc))
    no_vnni = engines.x86_routing(net, x, vnni=False)
    assert no_vnni["onednn_share"] == 0 and no_vnni["FBGEMM"]["layers"] == 3
    wide_dw = nn.Conv2d(128, 128, 3, groups=128)
    assert engines.x86_route(wide_dw, True) == "FBGEMM" and engines.x86_route(nn.ReLU(), True) is None
    net.train()
    engines.x86_routing(net, x, vnni=True)
    assert net.training and not any(m._forward_hooks for m in net.modules())  # left as it was
    with pytest.raises(TypeError, match="vnni"):
        engines.x86_routing(net, x, vnni="yes")
    with pytest.raises(TypeError, match="model"):
        engines.x86_routing("net", x, vnni=True)
