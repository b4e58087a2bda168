"""qlab.deploy on a small PT2E int8 conv net: the dead fp32 weights, export save/load (and why a fresh process
needs the quantized_decomposed ops), and an AOTInductor package run in a fresh process, bit-equal to
torch.compile's output. Packaging compiles C++: the slowest test here (about 20 s)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from qlab import deploy, pt2e

warnings.filterwarnings("ignore", message="To copy construct from a tensor")


@pytest.fixture(scope="module")
def int8():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(), nn.Conv2d(16, 32, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
        calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
        x = torch.randn(5, 3, 16, 16)
    return {"net": net, "q": pt2e.pt2e_int8(net, calib), "x": x}


def test_the_converted_model_keeps_dead_fp32_weights(int8):
    q = int8["q"]
    dead = deploy.unused_tensors(q)
    assert sorted(dead) == ["0.weight", "3.weight", "5.weight", "8.weight"]
    assert all(q.get_parameter(n).dtype == torch.float32 for n in dead)
    s = deploy.strip_unused(q)
    assert deploy.unused_tensors(s) == [] and deploy.unused_tensors(q) == dead  # a copy
    with torch.no_grad():
        assert torch.equal(s(int8["x"]), q(int8["x"]))


def test_export_save_load_is_bit_equal_and_needs_the_decomposed_ops(int8, tmp_path):
    x = int8["x"][:1]
    full, stripped = tmp_path / "full.pt2", tmp_path / "stripped.pt2"
    assert deploy.save(deploy.export_static(int8["q"], x), full) > deploy.save(
        deploy.export_static(deploy.strip_unused(int8["q"]), x), stripped)
    with torch.no_grad():
        assert torch.equal(deploy.load(stripped).module()(x), int8["q"](x))
    with pytest.raises(RuntimeError, match="failed to resolve torch.ops.quantized_decomposed"):
        deploy.run_fresh(stripped, int8["x"][:1], kind="export without ops")
    fresh = deploy.run_fresh(stripped, int8["x"], kind="export")
    with torch.no_grad():
        want = torch.cat([int8["q"](int8["x"][i : i + 1]) for i in range(5)])
    assert torch.equal(fresh["outputs"], want)
    assert "failed to resolve torch.ops.quantized_decomposed" in fresh["bare_error"]


def test_aoti_package_runs_in_a_fresh_process_bit_equal_to_torch_compile(int8, tmp_path):
    x = int8["x"][:1]
    path = tmp_path / "int8.pt2"
    seconds = deploy.aoti_package(deploy.export_static(deploy.strip_unused(int8["q"]), x), path)
    assert seconds > 0 and deploy.file_mb(path) > 0
    kernels = deploy.package_kernels(path)
    assert kernels["int8 conv (oneDNN)"] == 3 and kernels["int8 linear (oneDNN)"] == 1
    assert kernels["fp32 conv (oneDNN)"] == kernels["fp32 conv (ATen)"] == 0
    compiled = pt2e.lower(int8["q"], x)
    with torch.no_grad():
        want = torch.cat([compiled(int8["x"][i : i + 1]) for i in range(5)])
    fresh = deploy.run_fresh(path, int8["x"])
    assert not any(fresh["imported"].values()), fresh["imported"]
    assert fresh["threads"] == torch.get_num_threads()
    assert torch.equal(fresh["outputs"], want)
    with torch.no_grad():
        assert torch.equal(torch.cat([deploy.aoti_load(path)(int8["x"][i : i + 1]) for i in range(5)]), want)


def test_missing_or_wrong_paths_are_named(int8, tmp_path):
    missing = tmp_path / "nothing.pt2"
    for fn in (deploy.load, deploy.aoti_load, deploy.package_kernels, deploy.file_mb):
        with pytest.raises(FileNotFoundError, match="path must be an existing .pt2 file"):
            fn(missing)
    with pytest.raises(FileNotFoundError, match="path must be an existing"):
        deploy.run_fresh(missing, int8["x"])
    with pytest.raises(TypeError, match="path must be a file path"):
        deploy.load(None)
    ep = deploy.export_static(int8["q"], int8["x"][:1])
    with pytest.raises(ValueError, match="path must be a file path ending in .pt2"):
        deploy.aoti_package(ep, tmp_path / "model.so")
    with pytest.raises(TypeError, match="program must be a torch.export.ExportedProgram"):
        deploy.save(int8["q"], tmp_path / "x.pt2")
    with pytest.raises(TypeError, match="gm must be an FX GraphModule"):
        deploy.strip_unused(int8["net"])


def test_export_static_saves_only_the_example_rows(int8, tmp_path):
    big = torch.randn(400, 3, 16, 16)  # 1.2 MB; a slice of it shares that storage
    sliced = deploy.save(deploy.export_static(int8["q"], big[:1]), tmp_path / "sliced.pt2")
    alone = deploy.save(deploy.export_static(int8["q"], big[:1].clone()), tmp_path / "alone.pt2")
    assert abs(sliced - alone) < 1000 and alone < big.numel() * 4 / 2

