"""Issue 9, "smaller correctness items": evaluation with labels that have no ground truth, the checkpoint's
detection preset, rows centred on their timestamps in the training-free mode, the README's test command, and
tables that never cut a number."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import CheckpointError

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- 19: labels without ground truth


def test_evaluate_leaves_out_labels_without_ground_truth_with_one_warning(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {
        "v1": {"subset": "test", "duration": 30, "annotations": [{"segment": [1, 5], "label": "HighJump"}]},
        "v2": {"subset": "test", "duration": 30, "annotations": [{"segment": [2, 6], "label": "Diving"}]},
    }}))
    preds = tmp_path / "p.json"  # detect was run with a wider class list than this subset holds
    preds.write_text(json.dumps({"results": {
        "v1": [{"label": "high jump", "score": 0.9, "segment": [1, 5]},
               {"label": "pole vault", "score": 0.95, "segment": [1, 5]},
               {"label": "pole vault", "score": 0.5, "segment": [10, 15]}],
        "v2": [{"label": "Diving", "score": 0.8, "segment": [2, 6]},
               {"label": "Shotput", "score": 0.7, "segment": [2, 6]}],
    }}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann), "--tiou", "0.5", "-o",
                                 str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    log = " ".join(r.stderr.split())  # the log handler wraps long lines
    assert log.count("without ground truth") == 1 and "left out 3 prediction(s) of 2 label(s)" in log, r.stderr
    assert "'Shotput', 'pole vault'" in log
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["per_class"] == {"Diving": [1.0], "HighJump": [1.0]} and result["average_mAP"] == 1.0


# ---------------------------------------------------------------- 20: the checkpoint's detection preset


def _tiny_model(tiny_clip, tiny_clip_name, num_snippets=16):
    from stale_cli.model.config import ModelConfig
    from stale_cli.model.stale import STALE

    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=num_snippets, clip_model=tiny_clip_name,
                      encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
                      dropout=0.0)
    return STALE(cfg, tiny_clip).eval(), cfg


def test_activitynet_checkpoint_detects_with_its_preset(tmp_path, tiny_clip, tiny_clip_name):
    from stale_cli.checkpoint import read_checkpoint, save_checkpoint
    from stale_cli.data.windows import DataConfig
    from stale_cli.detect import DetectSettings, Detector
    from stale_cli.model.config import LossConfig

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


def test_protocol_baseline_uses_the_dataset_preset(tmp_path, tiny_clip_name, tiny_clip_weights, monkeypatch):
    """The protocol's training-free baseline on ActivityNet detects with sigma 0.75 and top 100."""
    import stale_cli.detect as detect_module
    from stale_cli.clip_backbone import load_clip
    from stale_cli.protocol import ProtocolConfig, run_protocol

    seen = []
    real = detect_module.Detector.__init__

    def spy(self, settings, *a, **kw):
        real(self, settings, *a, **kw)
        seen.append((self.mode, self.detect_cfg.nms_sigma, self.detect_cfg.top_k))

    monkeypatch.setattr(detect_module.Detector, "__init__", spy)
    from stale_cli.data.splits import load_split
    from stale_cli.fileio import write_features

    seen_classes, unseen = load_split("activitynet13/75_25/0")
    db = {"t0": {"subset": "training", "duration": 20.0,
                 "annotations": [{"segment": [1, 2], "label": name} for name in seen_classes]}}
    for i, name in enumerate(unseen):
        feats = np.random.default_rng(i).normal(size=(20, 32)).astype(np.float32)
        write_features(tmp_path / "f" / f"v{i}.npy", feats, {
            "fps": 1.0, "timestamps": [float(k) for k in range(20)], "duration": 20.0, "source": f"v{i}.mp4",
            "clip_model": tiny_clip_name, "clip_weights": str(tiny_clip_weights), "num_frames": 20})
        db[f"v{i}"] = {"subset": "validation", "duration": 20.0, "annotations": [{"segment": [2, 8], "label": name}]}
    (tmp_path / "a.json").write_text(json.dumps({"database": db}))
    cfg = ProtocolConfig("activitynet13", "75_25", splits=(0,), train=False)
    run_protocol(cfg, tmp_path / "f", tmp_path / "a.json", tmp_path / "w",
                 load_clip(tiny_clip_name, str(tiny_clip_weights)), progress=False)
    assert seen == [("clip", 0.75, 100)]
    preds = json.loads((tmp_path / "w" / "split_0" / "clip_predictions.json").read_text())
    assert preds["external_data"]["detect_config"]["nms_sigma"] == 0.75


# ---------------------------------------------------------------- 21: rows are frames at k / fps


def test_feature_rows_are_centred_on_their_timestamps():
    from stale_cli.data.windows import feature_timeline, plan_windows, DataConfig

    meta = {"fps": 4.0, "timestamps": [1.0 + k / 4 for k in range(40)]}
    src = feature_timeline(meta, 40)
    np.testing.assert_allclose(src.centres(), meta["timestamps"])
    # A run of rows [a, b) spans half a row either side of its first and last frames.
    assert float(src.to_seconds(8)) == pytest.approx(meta["timestamps"][8] - 0.125)
    assert float(src.to_seconds(12)) == pytest.approx(meta["timestamps"][11] + 0.125)
    for w in plan_windows(40, meta, DataConfig(num_snippets=16, overlap=0.5)):
        np.testing.assert_allclose(w.timeline.centres()[: w.valid_len],
                                   meta["timestamps"][w.start_row : w.start_row + w.valid_len])


def test_training_free_segments_are_centred_on_the_action_frames(tiny_clip_name, tiny_clip_weights):
    """Frames 20-39 of 80 (at 4 fps: 5.0 .. 9.75 s) show the action: the segment is centred on them, not late."""
    from stale_cli.clip_backbone import load_clip
    from stale_cli.detect import DetectSettings, Detector

    fps, rows = 4.0, 80
    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    det = Detector(DetectSettings(classes=["a dog", "a cat"], mode="clip", clip_model=tiny_clip_name,
                                  distractors=False), clip=clip)  # about where segments sit, not which name wins
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.02, size=(rows, det.text.shape[1]))
    feats[:, 0] += 1.0  # the scene
    feats[20:40] += 0.6 * det.text[0]
    meta = {"fps": fps, "timestamps": [k / fps for k in range(rows)], "duration": rows / fps}
    video = det.detect_features(feats.astype(np.float32), meta, "v", "synthetic")
    best = max((s for s in video.segments if s.label == "a dog"), key=lambda s: s.score)
    first, last = 20 / fps, 39 / fps
    assert (best.start + best.end) / 2 == pytest.approx((first + last) / 2, abs=0.02), best
    assert best.end - best.start > 0.7 * (last - first)  # smoothing takes about a row off either side
    np.testing.assert_allclose(video.times, meta["timestamps"])  # the plot's curves sit on the frames too


# ---------------------------------------------------------------- 22: the README's test command


def test_readme_test_command_prints_a_summary_line():
    import tomllib

    readme = (REPO / "README.md").read_text()
    (cmd,) = re.findall(r"^    \$ (.*pytest.*)$", readme, flags=re.M)[:1]  # what .ci/run runs
    pytest_args = shlex.split(cmd)
    addopts = shlex.split(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
                          .get("addopts", ""))
    quiet = sum(a.count("q") for a in pytest_args + addopts if re.fullmatch(r"-q+", a))
    assert quiet == 1, (cmd, addopts)  # -qq would drop the "N passed" line from the CI log


# ---------------------------------------------------------------- 23: tables never cut a number


def _summary(tious):
    return {"setting": "75_25", "dataset": "activitynet13", "test_subset": "validation", "tiou": tious,
            "rows": {"clip": {"name": "training-free CLIP (baseline)", "splits": list(range(10)),
                              "mAP_mean": [0.81234] * len(tious), "mAP_std": [0.0456] * len(tious),
                              "average_mAP_mean": 0.23456, "average_mAP_std": 0.0123}},
            "paper": {"mAP": [38.2] + [None] * (len(tious) - 1), "average_mAP": 24.9}}


@pytest.mark.parametrize("terminal, width", [(False, 80), (True, 80), (True, 300)])
def test_zero_shot_table_keeps_every_number(terminal, width):
    from rich.console import Console

    from stale_cli.cli.protocol import summary_table

    tious = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    console = Console(force_terminal=terminal, width=width, record=True, markup=False)
    summary_table(_summary(tious)).print(console)
    text = console.export_text()
    assert "…" not in text and text.count("81.2±4.6") == 10 and "23.5±1.2" in text and "24.9" in text
    assert all(f"@{t:g}" in text for t in tious)
    if terminal and width == 300:
        assert "┃" in text  # a rich table where it fits
    else:
        assert "┃" not in text and "training-free CLIP (baseline)" in text  # plain aligned text


def test_evaluate_table_in_a_batch_log_is_plain_and_whole(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v1": {"subset": "validation", "duration": 30, "annotations": [
        {"segment": [1, 5], "label": "Playing a very long named instrument with friends"}]}}}))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v1": [
        {"label": "Playing a very long named instrument with friends", "score": 0.9, "segment": [1, 4.5]}]}}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("Playing"))
    assert row.split()[-11:] == ["100.0"] * 8 + ["0.0"] * 2 + ["80.0"], row  # tIoU 0.875
    assert "…" not in r.stdout and "┃" not in r.stdout
