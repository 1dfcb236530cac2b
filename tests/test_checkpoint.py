"""Checkpoints: round trip without CLIP weights, weights_only loading, bad files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stale_cli.checkpoint import FORMAT, VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from stale_cli.data.windows import DataConfig
from stale_cli.errors import CheckpointError
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.stale import STALE


@pytest.fixture
def saved(tmp_path, tiny_clip, tiny_clip_name):
    torch.manual_seed(1)
    cfg = ModelConfig(feature_dim=24, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4, dropout=0.0)
    model = STALE(cfg, tiny_clip).eval()
    path = tmp_path / "ckpt" / "m.pt"
    save_checkpoint(path, model, cfg, LossConfig(weight_const=0.5), DataConfig(num_snippets=16),
                    ["HighJump", "Diving"], feature_fps=4.0, clip_model=tiny_clip_name, clip_weights="random",
                    epoch=3, history=[{"epoch": 3, "total": 1.0}])
    return path, model, cfg


def test_round_trip_rebuilds_the_same_model_without_clip_weights(saved, tiny_clip_name):
    path, model, cfg = saved
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # written atomically: no temporary left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["model_config"]["feature_dim"] == 24
    loaded, info = load_checkpoint(path, "cpu")
    assert info.model_config == cfg and info.loss_config.weight_const == 0.5 and info.data_config.num_snippets == 16
    assert info.class_names == ("HighJump", "Diving") and info.feature_fps == 4.0 and info.feature_dim == 24
    assert info.clip_model == tiny_clip_name and info.epoch == 3 and info.extra["history"][0]["epoch"] == 3
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 16, 24)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 10:] = False
    with torch.no_grad():
        a = model(x, valid, model.encode_classes(["HighJump", "Diving"]))
        b = loaded(x, valid, loaded.encode_classes(["HighJump", "Diving"]))
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(a["masks"], b["masks"])


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a stale checkpoint"):
        read_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match=r"not a stale checkpoint \(written by `stale train`\)"):
        read_checkpoint(other)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_other_version_or_unknown_fields_are_refused(saved, tmp_path):
    path, _, _ = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    newer = dict(raw, version=VERSION + 1)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=f"format version {VERSION + 1}, this stale reads version {VERSION}"):
        read_checkpoint(tmp_path / "newer.pt")
    extra_field = dict(raw, model_config={**raw["model_config"], "hologram_layers": 3})
    torch.save(extra_field, tmp_path / "field.pt")
    with pytest.raises(CheckpointError, match="hologram_layers"):
        read_checkpoint(tmp_path / "field.pt")


def test_state_dict_that_does_not_fit_its_config(saved, tmp_path):
    path, _, cfg = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    bad = dict(raw, feature_dim=48, model_config=dataclasses.asdict(dataclasses.replace(cfg, feature_dim=48)))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_checkpoint(tmp_path / "bad.pt")
