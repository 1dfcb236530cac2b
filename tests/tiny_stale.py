"""A tiny STALE model over the tiny CLIP (tests/conftest.py), for tests of the model and its training."""

from __future__ import annotations

import torch

from stale_cli.model.config import ModelConfig
from stale_cli.model.stale import STALE

# Head sizes small enough for CPU tests; a mask embedding of 16.
TINY_STALE = dict(encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
                  dropout=0.0, consistency_topk=4, mask_dim=16)


def tiny_stale(tiny_clip_name, tiny_clip, T=32, **kw) -> STALE:
    """A seeded STALE in eval mode on 32-dimensional features, windows of ``T`` snippets; ``kw`` overrides
    TINY_STALE."""
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=T, clip_model=tiny_clip_name, **{**TINY_STALE, **kw})
    return STALE(cfg, tiny_clip).eval()
