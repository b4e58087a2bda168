"""Small synthetic BERTs for the tests of notebook 10's modules: transformers' own BertModel with random weights
(seeded), so the unit tests need not load the real 22.7 M-parameter model."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

import qlab
from qlab.transformer import Embedder


def tiny_bert(seed: int = 0, layers: int = 2, outlier: float = 20.0) -> Embedder:
    """A 2-layer BERT (hidden 32, 4 heads) whose LayerNorms put one channel far above the rest, like channel 99
    of all-MiniLM-L6-v2."""
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    with qlab.scoped(seed=seed):
        bert = BertModel(cfg, add_pooling_layer=False).eval()
        with torch.no_grad():
            for m in bert.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.weight[7] = outlier
    return Embedder(bert).eval()


def batch(seed: int = 0, b: int = 4, t: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    if b > 3:  # two padded rows: one half, one with only 2 real tokens
        mask[1, t // 2 :] = 0
        mask[3, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}
