"""A tiny STALE model over the tiny CLIP (tests/conftest.py), and a small synthetic training set (feature files and
annotations), for tests of the model and its training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from stale_cli.model.config import ModelConfig
from stale_cli.model.stale import STALE
from stale_cli.sidecar import write_features

# Head sizes small enough for CPU tests; a mask embedding of 16.
TINY_STALE = dict(encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
                  dropout=0.0, consistency_topk=4, mask_dim=16)


def tiny_stale(tiny_clip_name, tiny_clip, T=32, **kw) -> STALE:
    """A seeded STALE in eval mode on 32-dimensional features, windows of ``T`` snippets; ``kw`` overrides
    TINY_STALE."""
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=T, clip_model=tiny_clip_name, **{**TINY_STALE, **kw})
    return STALE(cfg, tiny_clip).eval()


THUMOS_CLASSES = json.loads((Path(__file__).parent / "fixtures" / "thumos14_mini.json").read_text())["classes"]

FPS, ROWS = 2.0, 40  # 20-second synthetic videos, one feature row per half second

# Instances (start_s, end_s, label); HighJump and Diving are seen classes of thumos14/75_25/0, PoleVault unseen.
VIDEOS = {
    "v0": [(3, 8, "HighJump"), (12, 15, "Diving")],
    "v1": [(2, 6, "Diving"), (10, 16, "HighJump")],
    "v2": [(5, 9, "HighJump"), (13, 17, "PoleVault")],
    "v3": [(1, 4, "Diving"), (9, 13, "Diving")],
}


def make_dataset(root: Path, clip_name: str, dim: int = 32, videos=VIDEOS, seed: int = 0) -> tuple[Path, Path]:
    """Features where each class (and background) has its own prototype vector plus noise; annotations beside."""
    rng = np.random.default_rng(seed)
    labels = sorted({lab for inst in videos.values() for _, _, lab in inst})
    protos = {lab: rng.standard_normal(dim) * 2 for lab in ["background", *labels]}
    stamps = np.arange(ROWS) / FPS
    db = {}
    for vid, inst in videos.items():
        feats = np.tile(protos["background"], (ROWS, 1))
        for s, e, lab in inst:
            feats[(stamps >= s) & (stamps < e)] = protos[lab]  # row k is the frame at k / FPS
        feats += 0.3 * rng.standard_normal(feats.shape)
        write_features(root / "feats" / f"{vid}.npy", feats, {
            "fps": FPS, "timestamps": stamps.tolist(), "duration": ROWS / FPS, "source": f"{vid}.mp4",
            "clip_model": clip_name, "clip_weights": "random", "num_frames": ROWS})
        db[vid] = {"subset": "val", "duration": ROWS / FPS,
                   "annotations": [{"segment": [s, e], "label": lab} for s, e, lab in inst]}
    db["t0"] = {"subset": "test", "duration": 20.0, "annotations": [{"segment": [1, 2], "label": "PoleVault"}]}
    ann = root / "ann.json"
    ann.write_text(json.dumps({"classes": THUMOS_CLASSES, "database": db}))
    return root / "feats", ann
