"""Checkpoints (stale_cli/model/checkpoint.py): round trip without CLIP weights, weights_only loading, bad files,
crafted files (each one error line), non-finite weights, older checkpoints' fields, and no "initialized randomly"
warning for a model whose weights are loaded next."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from stale_cli.errors import CheckpointError
from stale_cli.model.checkpoint import FORMAT, VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.stale import STALE
from stale_cli.sidecar import write_features

from crafted_checkpoints import CRAFTED_CHECKPOINTS, craft_checkpoint  # tests/ is on sys.path (rootdir conftest)
from feature_files import detect_args, error_lines, features


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


def _tiny_model(tiny_clip, tiny_clip_name, num_snippets=16):
    from stale_cli.model.config import ModelConfig
    from stale_cli.model.stale import STALE

    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=num_snippets, clip_model=tiny_clip_name,
                      encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
                      dropout=0.0)
    return STALE(cfg, tiny_clip).eval(), cfg


def test_activitynet_checkpoint_detects_with_its_preset(tmp_path, tiny_clip, tiny_clip_name):
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.model.checkpoint import read_checkpoint, save_checkpoint
    from stale_cli.model.config import LossConfig
    from stale_cli.model.data.windows import DataConfig

    model, cfg = _tiny_model(tiny_clip, tiny_clip_name)
    paths = {}
    for name, data_cfg in (("anet", DataConfig(mode="resize", num_snippets=16, overlap=0.0)),
                           ("thumos", DataConfig(num_snippets=16))):
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(paths[name], model, cfg, LossConfig(), data_cfg, ["HighJump", "Diving"], feature_fps=2.0,
                        clip_model=tiny_clip_name)
    _, info = read_checkpoint(paths["anet"])
    assert (info.detect_config.nms_sigma, info.detect_config.top_k) == (0.75, 100)
    _, info = read_checkpoint(paths["thumos"])
    assert (info.detect_config.nms_sigma, info.detect_config.top_k) == (0.5, 200)

    assert info.dataset == "thumos14" and read_checkpoint(paths["anet"])[1].dataset == "activitynet13"

    # A checkpoint written before checkpoints recorded them gets its data preset's dataset and detect config.
    raw = torch.load(paths["anet"], weights_only=True)
    del raw["detect_config"], raw["dataset"]
    torch.save(raw, tmp_path / "old.pt")
    old = read_checkpoint(tmp_path / "old.pt")[1]
    assert old.detect_config.nms_sigma == 0.75 and old.dataset == "activitynet13"
    # One that names its dataset gets that dataset's detect config, whatever its data mode; the old spelling
    # "activitynet" reads as activitynet13, an unknown name is refused.
    raw = torch.load(paths["thumos"], weights_only=True)
    del raw["detect_config"]
    for name, want in (("activitynet", 0.75), ("thumos14", 0.5)):
        torch.save(dict(raw, dataset=name), tmp_path / "named.pt")
        assert read_checkpoint(tmp_path / "named.pt")[1].detect_config.nms_sigma == want
    torch.save(dict(raw, dataset="kinetics"), tmp_path / "named.pt")
    with pytest.raises(CheckpointError, match="unknown dataset 'kinetics'"):
        read_checkpoint(tmp_path / "named.pt")

    det = Detector(DetectSettings(classes=["a dog"], mode="stale", checkpoint=paths["anet"]))
    assert (det.detect_cfg.nms_sigma, det.detect_cfg.top_k) == (0.75, 100)
    assert det.metadata()["detect_config"]["nms_sigma"] == 0.75
    det = Detector(DetectSettings(classes=["a dog"], mode="stale", checkpoint=tmp_path / "old.pt", top_k=7))
    assert (det.detect_cfg.nms_sigma, det.detect_cfg.top_k) == (0.75, 7)  # --top-k still wins


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 1e300])
def test_checkpoint_with_an_unusable_feature_rate_is_refused(tmp_path, tiny_clip, tiny_clip_name, fps):
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.errors import CheckpointError
    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig
    from stale_cli.model.data.windows import DataConfig

    model, cfg = _tiny_model(tiny_clip, tiny_clip_name)
    save_checkpoint(tmp_path / "m.pt", model, cfg, LossConfig(), DataConfig(num_snippets=16), ["A"], feature_fps=fps,
                    clip_model=tiny_clip_name)
    with pytest.raises(CheckpointError, match="feature_fps must be a number in"):
        Detector(DetectSettings(classes=["a dog"], mode="stale", checkpoint=tmp_path / "m.pt"))


# ---------------------------------------------------------------- crafted checkpoints: one error line each


@pytest.mark.parametrize("name", sorted(CRAFTED_CHECKPOINTS))
def test_crafted_checkpoint_is_one_line(run, tmp_path, good_checkpoint, name):
    change, message = CRAFTED_CHECKPOINTS[name]
    bad = craft_checkpoint(good_checkpoint, tmp_path / f"{name}.pt", change)
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", "--checkpoint", bad, "-o", tmp_path / "out.json"), clip=False)
    assert r.exit_code == 1
    assert len(error_lines(r)) == 1 and message in error_lines(r)[0], r.stderr
    assert not (tmp_path / "out.json").exists()


def test_good_checkpoint_detects(run, tmp_path, good_checkpoint):
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", "--checkpoint", good_checkpoint, "-o", tmp_path / "out.json"),
            clip=False)
    assert r.exit_code == 0, r.output


def test_nonfinite_tensor_finds_nan_and_inf_also_in_half_precision():
    import torch

    from stale_cli.torchfile import nonfinite_tensor

    state = {"a": torch.ones(1000, 1000, dtype=torch.float16), "b": torch.arange(5), "c": torch.zeros(3)}
    assert nonfinite_tensor(state) is None  # a float16 sum of 10^6 ones overflows float16, not float32
    state["c"][1] = float("inf")
    assert nonfinite_tensor(state) == "c"
    state["a"][3, 3] = float("nan")
    assert nonfinite_tensor(state) == "a"


def test_checkpoints_without_a_prompt_init_keep_their_random_context(tmp_path, tiny_clip, tiny_clip_name):
    import torch

    from stale_cli.model.checkpoint import load_checkpoint, save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1, context_init="")
    path = tmp_path / "old.pt"
    save_checkpoint(path, STALE(cfg, tiny_clip), cfg, LossConfig(), DataConfig(num_snippets=16), ["a", "b"], 2.0,
                    tiny_clip_name)
    raw = torch.load(path, weights_only=True)
    del raw["model_config"]["context_init"]  # as stale 0.2 wrote it
    torch.save(raw, path)
    model, info = load_checkpoint(path)
    assert info.model_config.context_init == "" and model.text_encoder.context.shape == (4, 32)


def test_no_random_init_warning_where_weights_are_loaded_after(caplog, tiny_clip_name):
    """open_clip's "initialized randomly" is untrue when a checkpoint's weights are loaded into the model next;
    the QuickGELU hint for a local file is debug-level unless the file looks like OpenAI's."""
    import logging

    from stale_cli.features.clip_backbone import looks_like_openai_weights
    from stale_cli.model.checkpoint import build_model
    from stale_cli.model.config import ModelConfig

    with caplog.at_level(logging.INFO):
        build_model(ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name,
                                encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64, num_queries=4,
                                context_tokens=4))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    assert looks_like_openai_weights(Path("/hub/models--timm--vit_base_patch16_clip_224.openai/x.bin"))
    assert not looks_like_openai_weights(Path(__file__))
