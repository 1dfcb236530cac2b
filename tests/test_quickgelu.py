"""OpenAI's weights run with QuickGELU, the activation they were trained with, and files say which one ran.

Offline: random weights are laid into a Hugging Face hub cache exactly where open_clip looks for ViT-B-16's
``openai`` tag, and the real ``--clip-weights openai`` path runs against it (HF_HUB_OFFLINE=1). The tag, its hub
location and its ``quick_gelu`` flag are open_clip's own; only the architecture is shrunk: for this module the
names ViT-B-16 and ViT-B-16-quickgelu build the tests' tiny CLIP (six full-size builds made this one of the
suite's slowest tests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.features.clip_backbone import GELU, QUICK_GELU, activation_of, feature_activation_error, load_clip
from stale_cli.sidecar import FeatureMeta

MODEL = "ViT-B-16"


@pytest.fixture(scope="module")
def openai_cache(tmp_path_factory, tiny_clip_name):
    """A hub cache holding random weights as open_clip's ``openai`` tag for ViT-B-16 expects them, with ViT-B-16
    (and its -quickgelu twin) standing for the tiny architecture while the module runs; returns (the weights as a
    local file, the cache directory)."""
    import huggingface_hub.constants
    import open_clip
    from open_clip import factory

    mp = pytest.MonkeyPatch()
    # tiny_clip_name registered its config first: open_clip rebuilds this table when a config is added.
    tiny = open_clip.get_model_config(tiny_clip_name)
    mp.setitem(factory._MODEL_CONFIGS, MODEL, tiny)
    mp.setitem(factory._MODEL_CONFIGS, f"{MODEL}-quickgelu", dict(tiny, quick_gelu=True))
    cfg = open_clip.get_pretrained_cfg(MODEL, "openai")
    assert cfg["quick_gelu"] and cfg["hf_hub"].endswith("/")  # <org>/<repo>/ + open_clip's default file name
    org, repo = cfg["hf_hub"].strip("/").split("/")
    hub = tmp_path_factory.mktemp("hf") / "hub"
    commit = "0" * 40
    snapshot = hub / f"models--{org}--{repo}" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (hub / f"models--{org}--{repo}" / "refs").mkdir()
    (hub / f"models--{org}--{repo}" / "refs" / "main").write_text(commit)
    torch.manual_seed(0)
    state = open_clip.create_model(MODEL, pretrained=None).state_dict()
    weights = snapshot / "open_clip_pytorch_model.bin"
    torch.save(state, weights)
    del state
    mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield weights, hub
    mp.undo()


def frames(n=3):
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8))


def rel_diff(a, b) -> float:
    """Relative L2 difference. With the tiny CLIP's random weights GELU and QuickGELU differ by 0.2% (image tower)
    to 0.8% (text tower) of the features (the MLP inputs at initialisation are small, where the two curves nearly
    meet); the same network gives 0. Trained CLIP weights differ more."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_openai_tag_runs_quickgelu_in_both_towers(openai_cache, videos, tmp_path):
    weights, _ = openai_cache
    out = tmp_path / "feats"
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--out", str(out),
                                 "--clip-model", MODEL, "--clip-weights", "openai", "--precision", "fp32",
                                 "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "QuickGELU mismatch" not in r.output
    meta = json.loads((out / "single.json").read_text())
    assert meta["clip_weights"] == "openai" and meta["clip_activation"] == QUICK_GELU
    assert meta["precision"] == "fp32"
    feats = np.load(out / "single.npy").astype(np.float32)  # (1, 512)

    from stale_cli.features.extract import extract_video

    quick = load_clip(f"{MODEL}-quickgelu", str(weights))
    want, _ = extract_video(videos["single"]["path"], quick)
    assert rel_diff(feats, want) < 1e-4  # the same network (both stored as float16)
    gelu = load_clip(MODEL, str(weights))  # the architecture stale used to build for these weights
    assert (quick.activation, gelu.activation) == (QUICK_GELU, GELU)
    old, _ = extract_video(videos["single"]["path"], gelu)
    assert rel_diff(feats, old) > 1e-3  # GELU's: another network

    openai = load_clip(MODEL, "openai")
    assert openai.activation == QUICK_GELU and openai.weights == "openai"
    texts = ["a person doing a high jump", "pole vault"]
    x = frames()
    for encode in ("encode_text", "encode_images"):
        args = texts if encode == "encode_text" else x
        ours = getattr(openai, encode)(args)
        assert rel_diff(ours, getattr(quick, encode)(args)) < 1e-6
        assert rel_diff(ours, getattr(gelu, encode)(args)) > 1e-3
    del gelu

    # Features made the old way (ViT-B-16 + openai, nothing recorded) are found: resume reports them instead of
    # skipping, and detect refuses them with one line while the new ones go through.
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    np.save(old_dir / "single.npy", old)
    stale_meta = {k: v for k, v in meta.items() if k != "clip_activation"}
    (old_dir / "single.json").write_text(json.dumps(stale_meta))
    from stale_cli.features.extract import extract_many

    errors = []
    s = extract_many([videos["single"]["path"]], old_dir, openai, progress=False, on_error=errors.append)
    assert s.done == 0 and len(s.failed) == 1 and "clip_activation 'gelu' (asked: 'quick_gelu')" in errors[0]
    r = CliRunner().invoke(app, ["detect", str(old_dir / "single.npy"), str(out / "single.npy"), "--classes",
                                 "high jump,pole vault", "--mode", "clip", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [l for l in r.output.splitlines() if l.startswith("error:") and "old" in l]
    assert len(lines) == 1 and "running gelu" in lines[0] and "quickgelu" in lines[0], r.output
    assert "extract them again" in lines[0]
    assert "1 video(s) done" in r.output


def test_feature_activation_errors():
    new = FeatureMeta(fps=4.0, clip_model=MODEL, clip_weights="openai", clip_activation=QUICK_GELU)
    assert feature_activation_error(new) is None and feature_activation_error(new, QUICK_GELU) is None
    assert "text encoder runs gelu" in feature_activation_error(new, GELU)
    old = FeatureMeta(fps=4.0, clip_model=MODEL, clip_weights="openai")
    assert "older stale" in feature_activation_error(old)
    assert feature_activation_error(old.replace(clip_model=f"{MODEL}-quickgelu")) is None
    assert feature_activation_error(old.replace(clip_weights="/some/file.bin")) is None
    assert feature_activation_error(old.replace(clip_weights="laion2b_s34b_b88k")) is None


def test_checkpoint_records_and_rebuilds_the_activation(tmp_path, tiny_clip_name):
    import open_clip

    from stale_cli.errors import CheckpointError
    from stale_cli.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE

    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_clip_name, pretrained=None, force_quick_gelu=True)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=8, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=32, decoder_layers=1, num_queries=2, context_tokens=2, dropout=0.0)
    model = STALE(cfg, clip).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg, LossConfig(), DataConfig(num_snippets=8), ["a", "b"], 4.0, tiny_clip_name)
    raw = torch.load(path, weights_only=True)
    assert raw["clip_activation"] == QUICK_GELU
    loaded, info = load_checkpoint(path)
    assert info.clip_activation == QUICK_GELU and activation_of(loaded) == QUICK_GELU
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_classes(["high jump"]), model.encode_classes(["high jump"]))

    # A checkpoint from before the fix: ViT-B-16 text tower with OpenAI's weights, activation not recorded.
    del raw["clip_activation"]
    raw["clip_model"], raw["clip_weights"] = MODEL, "openai"
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: checkpoint made with CLIP ViT-B-16 running gelu.*"
                                              r"trained with quickgelu; train it again"):
        read_checkpoint(tmp_path / "old.pt")
    raw["clip_weights"] = "random"  # no tag, nothing to contradict: read as the GELU it ran with
    torch.save(raw, tmp_path / "random.pt")
    assert read_checkpoint(tmp_path / "random.pt")[1].clip_activation == GELU


def test_training_refuses_features_made_the_old_way(tmp_path, tiny_clip, tiny_clip_name):
    from tiny_stale import make_dataset

    from stale_cli.errors import DataError
    from stale_cli.model.config import ModelConfig
    from stale_cli.model.data.annotations import parse_annotations
    from stale_cli.model.train import TrainConfig, train

    feats, ann_path = make_dataset(tmp_path, MODEL)
    for sidecar in feats.glob("*.json"):  # ViT-B-16 + OpenAI's weights, no activation: made with GELU
        sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), clip_weights="openai")))
    ann = parse_annotations(json.loads(ann_path.read_text())).select_subset("val")
    with pytest.raises(DataError, match=r"v0\.npy: features made with CLIP ViT-B-16 running gelu .*extract them again"):
        train(feats, ann, ["HighJump", "Diving"], tmp_path / "m.pt", tiny_clip, tiny_clip_name,
              model_cfg=ModelConfig(), train_cfg=TrainConfig(epochs=1), progress=False)
