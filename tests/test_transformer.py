"""qlab.transformer: the real all-MiniLM-L6-v2 offline, the data of notebook 10 and the quality measures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qlab
from qlab import transformer as T


@pytest.fixture(scope="module")
def real():
    bert, tok = T.load()
    return T.Embedder(bert).eval(), tok


def test_setup_sets_the_hub_offline(monkeypatch):
    for k in qlab._env.OFFLINE_ENV:
        monkeypatch.delenv(k, raising=False)
    qlab.setup(quiet=True, threads=None)
    assert {k: os.environ[k] for k in qlab._env.OFFLINE_ENV} == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_model_loads_with_the_network_blocked(tmp_path):
    """A fresh process where every socket connection raises: setup, load, embed -- and nothing tried the network
    behind our back (a blocked attempt would have raised, or been counted)."""
    code = textwrap.dedent("""
        import socket
        attempts = []
        def refuse(self, address, *a, **k):
            attempts.append(address)
            raise OSError("network blocked by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        import qlab
        from qlab import transformer as T
        qlab.setup(quiet=True)
        bert, tok = T.load()
        e = T.embed(T.Embedder(bert), tok, ["Ok.", "The network is blocked."])
        print(tuple(e.shape), attempts)
    """)
    env = {k: v for k, v in os.environ.items() if k not in qlab._env.OFFLINE_ENV}
    env["HF_HOME"] = str(tmp_path)  # an empty cache: nothing to fall back on but the wheel's folder
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(2, 384) []"


def test_embedder_matches_sentence_transformers(real):
    """Equation (1) is what sentence-transformers computes for this model (its own loader, same folder)."""
    from sentence_transformers import SentenceTransformer

    model, tok = real
    with qlab.scoped():
        st_model = SentenceTransformer(str(T.model_path()), device="cpu", local_files_only=True)
    sentences = T.SENTENCES[:6]
    ours = T.embed(model, tok, sentences)
    theirs = torch.from_numpy(st_model.encode(sentences, convert_to_numpy=True))
    assert T.cosines(ours, theirs).min() > 1 - 1e-5


def test_the_data_is_as_documented():
    pairs = T.sentence_pairs()
    assert len(pairs) == 170 and len(pairs) >= 150
    assert set(pairs.scores.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    rs = T.retrieval_sentences(pairs)
    assert len(rs) == 205 and len(set(rs)) == len(rs)
    cal = T.calibration_sentences()
    assert len(cal) == 48
    assert not set(cal) & (set(rs) | set(T.SENTENCES)), "calibration sentences must not be scored"
    assert len(T.SENTENCES) == 20


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    e = T.mean_pool(h, mask)
    alone = T.mean_pool(h[:1, :2], mask[:1, :2])
    assert torch.allclose(e[:1], alone, atol=1e-6) and torch.allclose(e.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match=r"attention_mask \[B, T\]"):
        T.mean_pool(h, mask[:, :3])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=3, max_size=30), st.integers(0, 2**31 - 1))
def test_spearman_matches_scipy_with_ties(values, seed):
    from scipy.stats import spearmanr

    x = torch.tensor(values, dtype=torch.float64)
    y = torch.randn(len(values), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).round()
    want = spearmanr(x.numpy(), y.numpy()).statistic
    got = float(T.spearman(x, y))
    assert (np.isnan(want) and np.isnan(got)) or abs(got - want) < 1e-12


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)
    rho = float(T.spearman(x, y))
    ci = T.bootstrap_ci(lambda idx: T.spearman(x[idx], y[idx]), 200)
    assert ci == T.bootstrap_ci(lambda idx: T.spearman(x[idx], y[idx]), 200)
    assert ci[0] < rho < ci[1] and ci[1] - ci[0] < 0.2
    with pytest.raises(ValueError, match="level must be"):
        T.bootstrap_ci(lambda idx: idx.double().mean(1), 10, level=1.0)


def test_retrieval_agreement_and_paired_difference():
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    share, agree = T.retrieval_agreement(ref, ref)
    assert share == 1.0 and agree.all()
    noisy = ref + 0.3 * torch.randn(50, 16, generator=g)
    assert T.retrieval_agreement(noisy, ref)[0] < 1.0
    scores = torch.arange(25, dtype=torch.float64) % 6
    d, (lo, hi) = T.paired_difference(ref[:25], ref[25:], ref[:25], ref[25:], scores)
    assert d == 0.0 and lo == hi == 0.0
    with pytest.raises(ValueError, match="same shape"):
        T.cosines(ref, ref[:3])
    with pytest.raises(ValueError, match="at least 3 rows"):
        T.retrieval_agreement(ref[:2], ref[:2])


def test_bad_input_is_named(real):
    model, tok = real
    with pytest.raises(TypeError, match="sentences must be a non-empty list"):
        T.tokenize(tok, "one string")
    with pytest.raises(TypeError, match="model must be callable"):
        T.embed(3, tok, ["a"])
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        T.load(attn_implementation="flash")
