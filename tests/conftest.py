"""Shared fixtures: a tiny randomly initialised CLIP built by open_clip from a small config.

Nothing here touches the network: the model config is registered with open_clip from this file and the weights
are random (seeded), saved once per session so commands can load them with ``--clip-weights PATH``.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CLIP_NAME = "stale-tiny"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _register_tiny_clip(directory) -> None:
    import open_clip

    path = directory / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(path)


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory) -> str:
    """Name of the tiny open_clip architecture (registered with open_clip for this test session)."""
    _register_tiny_clip(tmp_path_factory.mktemp("clip_config"))
    return TINY_CLIP_NAME


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_name):
    """A seeded, randomly initialised tiny open_clip CLIP model in eval mode."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip_weights(tiny_clip, tmp_path_factory):
    """Path to the tiny CLIP's state dict, saved with torch.save (a "local weights file")."""
    import torch

    path = tmp_path_factory.mktemp("clip_weights") / "tiny_clip.pt"
    torch.save(tiny_clip.state_dict(), path)
    return path
