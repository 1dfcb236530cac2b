"""The CLIP backbone: preprocessing parity with open_clip, loading weights, encoding, and the offline error."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stale_cli.errors import WeightsError
from stale_cli.features.clip_backbone import load_clip, resize_and_crop


def natural_frame(h, w, seed):
    """Smooth structure plus noise, like a video frame (pure noise would exaggerate resampling differences)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None] * np.array([1.0, 0.5, -0.7])
    return (base + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


# Parity with open_clip's PIL-based transform (Resize(shorter side, bicubic) + CenterCrop + ToTensor + Normalize):
# measured max difference 1/255 when shrinking, 2/255 when enlarging (PIL and torch round bicubic taps slightly
# differently), mean difference below 0.01/255; geometry (sizes, crop offsets) is identical.
PARITY_MAX = 2.0 / 255
PARITY_MEAN = 0.01 / 255


@pytest.mark.parametrize("hw", [(576, 768), (240, 320), (225, 301), (360, 640), (100, 80), (224, 224)])
def test_preprocessing_matches_open_clip_transform_at_224(hw):
    import open_clip
    from PIL import Image

    from stale_cli.features.clip_backbone import ClipBackbone

    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    reference = open_clip.image_transform(224, is_train=False, mean=mean, std=std)
    backbone = ClipBackbone(None, "x", "random", None, 224, 512, mean, std, "shortest", torch.device("cpu"))
    frames = [natural_frame(*hw, seed) for seed in range(3)]
    ours = backbone.preprocess(torch.from_numpy(np.stack(frames)))  # (3, 3, 224, 224)
    ref = torch.stack([reference(Image.fromarray(f)) for f in frames])
    assert ours.shape == ref.shape == (3, 3, 224, 224)
    diff = (ours - ref).abs() * torch.tensor(std).view(1, 3, 1, 1)  # back to [0, 1] pixel units
    assert diff.max() <= PARITY_MAX + 1e-6
    assert diff.mean() <= PARITY_MEAN


def test_preprocessing_matches_the_models_own_preprocess(tiny_clip_name, tiny_clip_weights):
    import open_clip
    from PIL import Image

    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_name, pretrained=None)
    frames = np.stack([natural_frame(64, 96, s) for s in range(4)])
    ours = clip.preprocess(torch.from_numpy(frames))
    ref = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    diff = (ours - ref).abs() * torch.tensor(clip.std).view(1, 3, 1, 1)
    assert diff.max() <= PARITY_MAX + 1e-6


def test_resize_modes_give_the_input_size():
    x = torch.from_numpy(np.stack([natural_frame(50, 90, 0)]))
    for mode in ("shortest", "squash", "longest"):
        assert resize_and_crop(x, 32, mode).shape == (1, 32, 32, 3)
    longest = resize_and_crop(x, 32, "longest")
    assert longest[0, 0].sum() == 0 and longest[0, 16].sum() > 0  # padded rows at the top, image in the middle


def test_load_local_weights_and_encode(tiny_clip_name, tiny_clip_weights, tiny_clip):
    clip = load_clip(tiny_clip_name, str(tiny_clip_weights), "cpu")
    assert (clip.name, clip.image_size, clip.embed_dim) == (tiny_clip_name, 32, 32)
    assert clip.weights == str(tiny_clip_weights.resolve())
    assert not clip.model.training
    frames = torch.from_numpy(np.stack([natural_frame(40, 60, s) for s in range(5)]))
    feats = clip.encode_images(frames, batch_size=2)  # (5, 32) in batches of 2, 2, 1
    with torch.no_grad():
        ref = tiny_clip.encode_image(clip.preprocess(frames))
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    # a preprocessed batch is taken as is
    torch.testing.assert_close(clip.encode_images(clip.preprocess(frames)), ref, atol=1e-5, rtol=1e-5)
    text = clip.encode_text(["high jump", "pole vault", "someone opens the fridge"])
    assert text.shape == (3, 32) and torch.isfinite(text).all()


def test_random_weights(tiny_clip_name):
    clip = load_clip(tiny_clip_name, None)
    assert clip.weights == "random"
    assert clip.encode_images(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 32)


def test_weights_errors(tiny_clip_name, tmp_path):
    with pytest.raises(WeightsError, match="neither a file nor a pretrained tag"):
        load_clip(tiny_clip_name, str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load CLIP weights"):
        load_clip(tiny_clip_name, str(bad))
    with pytest.raises(WeightsError, match="unknown --clip-model"):
        load_clip("ViT-Nope-99", None)


def test_offline_without_cache_names_both_ways_out(tmp_path, videos):
    """A user offline with an empty cache asks for OpenAI's ViT-B-16: one error line, no download, no model built.

    Run as a separate process so that huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE from the
    environment as it would for a user. Proxies point at a closed local port: any network attempt fails at once.
    """
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    env.pop(CLIP_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "stale_cli", "extract-features", str(videos["cfr25"]["path"]),
         "--out", str(tmp_path / "out"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "'openai'" in lines[0] and "ViT-B-16" in lines[0]
    assert "go online once" in lines[0] and "--clip-weights PATH" in lines[0] and CLIP_ENV in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


CLIP_ENV = "STALE_CLIP_WEIGHTS"
