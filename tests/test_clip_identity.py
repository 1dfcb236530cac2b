"""CLIP identity (issue 16 item 4): feature files and checkpoints record which CLIP weights made them (a tag, or a
weights file's sha256), and detect / train refuse features made with other weights than their text tower."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.clip_identity import CACHE_NAME, WeightsId, weights_sha256
from stale_cli.textcache import cache_dir


@pytest.fixture(scope="module")
def other_weights(tiny_clip_name, tmp_path_factory):
    """Another tiny CLIP weights file: same architecture, other (seeded random) weights."""
    import open_clip

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other_weights") / "other.pt"
    torch.save(open_clip.create_model(tiny_clip_name, pretrained=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def extracted(videos, tiny_clip_name, tiny_clip_weights, tmp_path_factory):
    """Features of two short videos, extracted with the tiny CLIP's weights file."""
    out = tmp_path_factory.mktemp("identity_feats")
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), str(videos["cfr25"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return out


def detect(paths, clip_name, weights):
    return CliRunner().invoke(app, ["detect", *map(str, paths), "--classes", "a dog,a cat", "--mode", "clip",
                                    "--clip-model", clip_name, "--clip-weights", str(weights), "--no-progress"])


def test_a_weights_file_is_identified_by_its_content(tiny_clip_weights, other_weights, tmp_path):
    digest = hashlib.sha256(tiny_clip_weights.read_bytes()).hexdigest()
    assert weights_sha256(str(tiny_clip_weights)) == digest
    # Cached by (path, size, mtime) beside the text cache, so a later run does not read the file again.
    cached = json.loads((cache_dir() / CACHE_NAME).read_text())
    assert digest in cached.values() and any(k.startswith(str(tiny_clip_weights)) for k in cached)
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_clip_weights, copy)
    a, b = WeightsId(str(tiny_clip_weights), digest), WeightsId(str(copy), weights_sha256(str(copy)))
    assert a.same_as(b) is True  # a copy elsewhere is the same weights
    assert a.same_as(WeightsId(str(other_weights), weights_sha256(str(other_weights)))) is False
    assert weights_sha256("openai") is None and weights_sha256("random") is None
    # Tags compare by name; a file of an older version (no hash), "random" or nothing is not identified.
    assert WeightsId("openai").same_as(WeightsId("openai")) is True
    assert WeightsId("openai").same_as(WeightsId("laion2b_s34b_b88k")) is False
    assert WeightsId("openai").same_as(a) is False
    # A relative path (a hand-made sidecar) is a file without a hash too, not a tag to compare by name.
    for unknown in (WeightsId(str(tiny_clip_weights)), WeightsId("random"), WeightsId(None),
                    WeightsId("bench_out/w.pt"), WeightsId("w.bin")):
        assert unknown.same_as(a) is None and a.same_as(unknown) is None


def test_detect_refuses_features_of_other_weights(extracted, tiny_clip_name, tiny_clip_weights, other_weights):
    meta = json.loads((extracted / "single.json").read_text())
    assert meta["clip_weights"] == str(tiny_clip_weights.resolve())
    assert meta["clip_weights_sha256"] == hashlib.sha256(tiny_clip_weights.read_bytes()).hexdigest()

    r = detect([extracted / "single.npy"], tiny_clip_name, tiny_clip_weights)  # the same weights: fine
    assert r.exit_code == 0, r.output
    assert "do not record" not in r.output

    r = detect([extracted / "single.npy"], tiny_clip_name, other_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [ln for ln in r.stderr.splitlines() if "features made with CLIP weights" in ln]
    assert line.startswith("error: ") and f"pass --clip-weights {tiny_clip_weights.resolve()}" in line


def test_old_sidecars_without_identity_warn_once_and_go_on(extracted, tiny_clip_name, other_weights, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(extracted, old)
    for name in ("single", "cfr25"):  # as stale 0.4 wrote them: no content hash
        meta = json.loads((old / f"{name}.json").read_text())
        del meta["clip_weights_sha256"]
        (old / f"{name}.json").write_text(json.dumps(meta))
    r = detect([old / "single.npy", old / "cfr25.npy"], tiny_clip_name, other_weights)
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert text.count("do not record which CLIP weights made them") == 1 and "going on" in text


def test_stale_mode_compares_with_the_checkpoints_weights(tiny_clip, tiny_clip_name, tiny_clip_weights,
                                                          other_weights, tmp_path):
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.errors import InputError
    from stale_cli.model.checkpoint import read_checkpoint, save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE
    from stale_cli.sidecar import FeatureMeta

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4)
    ckpt = tmp_path / "m.pt"
    label = str(tiny_clip_weights.resolve())
    save_checkpoint(ckpt, STALE(cfg, tiny_clip), cfg, LossConfig(), DataConfig(num_snippets=16), ["a dog"], 2.0,
                    tiny_clip_name, label, clip_weights_sha256=weights_sha256(label))
    assert read_checkpoint(ckpt)[1].clip_weights_sha256 == weights_sha256(label)
    det = Detector(DetectSettings(classes=["a dog"], checkpoint=ckpt, distractors=False))
    feats = np.random.default_rng(0).normal(size=(20, 32)).astype(np.float32)
    mine = FeatureMeta(fps=2.0, clip_model=tiny_clip_name, clip_weights=label, clip_weights_sha256=weights_sha256(label))
    assert det.detect_features(feats, mine, "v", "v.npy").video_id == "v"
    other = mine.replace(clip_weights=str(other_weights), clip_weights_sha256=weights_sha256(str(other_weights)))
    with pytest.raises(InputError, match=f"was trained from .*; extract them with --clip-weights {label}"):
        det.detect_features(feats, other, "v", "v.npy")


def test_train_refuses_features_of_other_weights(extracted, videos, tiny_clip_name, other_weights, tmp_path):
    db = {name: {"subset": "training", "duration": videos[name]["duration"],
                 "annotations": [{"segment": [0.0, 0.5], "label": "a dog"}]} for name in ("single", "cfr25")}
    (tmp_path / "a.json").write_text(json.dumps({"database": db}))
    r = CliRunner().invoke(app, ["train", "--features", str(extracted), "--annotations", str(tmp_path / "a.json"),
                                 "--out", str(tmp_path / "m.pt"), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(other_weights), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "features made with CLIP weights" in line and "pass --clip-weights" in line
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("recorded", ["file", "random", "missing"])
def test_a_fine_tuned_tower_leaves_new_names_to_clips_own(recorded, tiny_clip, tiny_clip_name, tiny_clip_weights,
                                                          tmp_path, caplog):
    """A checkpoint trained with --tune-text-encoder: names it never saw are read by CLIP's own text tower, loaded
    from the weights the checkpoint records; when those cannot be had, by its tuned tower, with a warning."""
    from stale_cli.detection.clipmode import class_text_features
    from stale_cli.detection.detect import Detector, DetectSettings
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
                      freeze_text_encoder=False)
    model = STALE(cfg, tiny_clip)  # the text tower is a copy
    torch.manual_seed(0)
    with torch.no_grad():  # "fine-tuned": moved away from CLIP's weights
        for p in model.text_encoder.transformer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    label = {"file": str(tiny_clip_weights.resolve()), "random": "random",
             "missing": str(tmp_path / "gone.pt")}[recorded]
    ckpt = tmp_path / "tuned.pt"
    save_checkpoint(ckpt, model, cfg, LossConfig(), DataConfig(num_snippets=16), ["a dog"], 2.0, tiny_clip_name,
                    label, clip_weights_sha256=weights_sha256(label) if recorded == "file" else None)
    names = ["a dog", "a cat"]
    det = Detector(DetectSettings(classes=names, checkpoint=ckpt, distractors=False, precision="fp32"))
    assert det.new_idx == [1]
    clips = class_text_features(load_clip(tiny_clip_name, str(tiny_clip_weights)), names, det.settings.clip_cfg)
    tuned = det._prior_rows(names)
    assert np.abs(clips - tuned).max() > 0.05  # the test can tell the towers apart
    warned = [r.message for r in caplog.records if "text tower was fine-tuned" in r.getMessage()]
    if recorded == "file":
        np.testing.assert_allclose(det.prior_text, clips, atol=1e-5)
        assert not warned
    else:
        np.testing.assert_allclose(det.prior_text, tuned, atol=1e-5)
        assert len(warned) == 1
