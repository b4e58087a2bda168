"""scripts/isa_matrix.py's choice of notebooks for the no-compiler replay: the notebooks that loaded qlab.kernels in
the main nbval run, as the root conftest.py and qlab.kernels record them in QLAB_KERNEL_TRACE."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _isa_matrix():
    spec = importlib.util.spec_from_file_location("isa_matrix", ROOT / "scripts" / "isa_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("QLAB_KERNEL_TRACE", "QLAB_NOTEBOOK")}
    return {**env, "QLAB_NO_EXT": "1", **extra}


def test_loading_qlab_kernels_names_the_notebook_and_importing_qlab_does_not(tmp_path):
    trace = tmp_path / "trace.txt"
    env = _env(QLAB_KERNEL_TRACE=str(trace), QLAB_NOTEBOOK="notebooks/08-vit-attention-int8.ipynb")
    subprocess.run([sys.executable, "-c", "import qlab, qlab.pt2e, qlab.models"], env=env, check=True)
    assert not trace.exists()
    subprocess.run([sys.executable, "-c", "import qlab.kernels"], env=env, check=True)
    assert trace.read_text() == "notebooks/08-vit-attention-int8.ipynb\n"


def test_an_nbval_run_records_the_notebook_whose_kernel_loaded_qlab_kernels(tmp_path):
    """End to end, as `make test` runs it: the root conftest.py names the notebook before nbval starts its kernel."""
    here = ROOT / "build" / "isa-matrix-test"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    cells = {"uses.ipynb": "import qlab.kernels\nprint(qlab.kernels.backend())", "plain.ipynb": "import qlab\nprint(1)"}
    for name, src in cells.items():
        nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                         "source": src}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        (here / name).write_text(json.dumps(nb))
    trace = tmp_path / "trace.txt"
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                            "-p", "no:randomly", "-p", "no:cacheprovider", "build/isa-matrix-test"],
                           cwd=ROOT, env=_env(QLAB_KERNEL_TRACE=str(trace)), capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-2000:]
        assert trace.read_text().splitlines() == ["build/isa-matrix-test/uses.ipynb"]
    finally:
        shutil.rmtree(here, ignore_errors=True)


def test_traced_notebooks_reads_the_trace_and_refuses_what_it_cannot_trust(tmp_path):
    m = _isa_matrix()
    trace = tmp_path / "trace.txt"
    trace.write_text("notebooks/08-vit-attention-int8.ipynb\n-\nnotebooks/00-setup-check.ipynb\n"
                     "notebooks/08-vit-attention-int8.ipynb\n")
    assert m.traced_notebooks(trace) == ["notebooks/00-setup-check.ipynb", "notebooks/08-vit-attention-int8.ipynb"]
    with pytest.raises(SystemExit, match="no such file"):
        m.traced_notebooks(tmp_path / "missing.txt")
    trace.write_text("notebooks/99-gone.ipynb\n")
    with pytest.raises(SystemExit, match=r"notebooks that do not exist: \['notebooks/99-gone.ipynb'\]"):
        m.traced_notebooks(trace)
    assert m.main(["--kernel-trace"]) == 2 and m.main(["nope"]) == 2


def test_a_setting_is_skipped_only_when_the_host_cannot_run_it_or_the_main_run_already_was_it():
    m = _isa_matrix()
    avx2, zen4, xeon = {"avx2", "fma"}, {"avx2", "fma", "avx512f", "avx512_vnni"}, {"avx2", "fma", "avx512f",
                                                                                 "avx512_vnni", "amx_int8"}
    assert "nothing above AVX2" in m.skip_reason("avx2", avx2) and m.skip_reason("avx2", zen4) is None
    assert m.skip_reason("avx2", avx2 | {"avx_vnni"}) is None and "no AVX2" in m.skip_reason("avx2", set())
    assert "no AVX-512 VNNI" in m.skip_reason("avx512_vnni", avx2) and "no AMX" in m.skip_reason("avx512_vnni", zen4)
    assert m.skip_reason("avx512_vnni", xeon) is None and m.skip_reason("no_ext", avx2) is None
    client = avx2 | {"avx_vnni"}  # an Intel client core: AVX-VNNI, no AVX-512
    assert "no AVX-VNNI" in m.skip_reason("avx_vnni", zen4) and "nothing above AVX-VNNI" in m.skip_reason("avx_vnni",
                                                                                                         client)
    assert m.skip_reason("avx_vnni", xeon | {"avx_vnni"}) is None
