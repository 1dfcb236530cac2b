"""The zero-shot protocol end to end on tiny synthetic THUMOS14-like features with the tiny CLIP (2 splits, 1 epoch).

Each synthetic action is the tiny CLIP's own prompt-ensembled text feature of its class (plus noise) over its
snippets, and noise elsewhere, so the training-free baseline must find the unseen classes, and the trained model
runs through detection and evaluation on the same data.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.evaluation.protocol import ProtocolConfig, markdown, parse_splits, summarise
from stale_cli.model.data.splits import load_split
from stale_cli.sidecar import write_features

from feature_files import error_lines  # tests/ is on sys.path (rootdir conftest)

ROWS = 48  # feature rows (seconds at 1 fps) per synthetic video


def _classes():
    seen, unseen = load_split("thumos14/75_25/0")
    return sorted(seen + unseen)  # all 20 THUMOS14 classes


@pytest.fixture(scope="module")
def dataset(tiny_clip_name, tiny_clip_weights, tmp_path_factory):
    from stale_cli.detection.clipmode import class_text_features
    from stale_cli.features.clip_backbone import load_clip

    root = tmp_path_factory.mktemp("zs")
    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    classes = _classes()
    text = class_text_features(clip, classes)  # (20, 32), unit rows
    rng = np.random.default_rng(0)
    db = {}
    feats_dir = root / "features"

    def video(vid, subset, instances):
        x = rng.normal(0.0, 0.3, size=(ROWS, text.shape[1])) / np.sqrt(text.shape[1])
        for c, s, e in instances:
            x[s:e] = text[c] + rng.normal(0.0, 0.02, size=(e - s, text.shape[1]))
        meta = {"fps": 1.0, "timestamps": [float(i) for i in range(ROWS)], "duration": float(ROWS),
                "source": f"{vid}.mp4", "clip_model": clip.name, "clip_weights": str(clip.weights), "num_frames": ROWS}
        write_features(feats_dir / f"{vid}.npy", x.astype(np.float32), meta)
        db[vid] = {"subset": subset, "duration": float(ROWS),
                   "annotations": [{"segment": [float(s), float(e)], "label": classes[c]} for c, s, e in instances]}

    for i in range(20):  # test: one video per class, two instances
        video(f"video_test_{i:03d}", "test", [(i, 6, 14), (i, 30, 38)])
    for i in range(10):  # training subset: two classes per video
        video(f"video_validation_{i:03d}", "val", [(2 * i, 4, 12), (2 * i + 1, 26, 36)])
    db["video_test_nofeatures"] = {"subset": "test", "duration": 30.0,
                                   "annotations": [{"segment": [1, 5], "label": classes[0]}]}
    ann = root / "annotations.json"
    ann.write_text(json.dumps({"database": db}))
    return feats_dir, ann, tiny_clip_name, tiny_clip_weights


def _run(dataset, work, *extra):
    feats, ann, clip_name, clip_weights = dataset
    args = ["zero-shot", "--dataset", "thumos14", "--setting", "75_25", "--features", str(feats),
            "--annotations", str(ann), "--work-dir", str(work), "--splits", "0-1", "--epochs", "1",
            "--batch-size", "8", "--num-snippets", "16", "--clip-model", clip_name, "--clip-weights",
            str(clip_weights), "--device", "cpu", "--no-progress", *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


TINY_MODEL = dict(encoder_layers=1, num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1)


def _run_library(dataset, work, lr=1e-3):
    from stale_cli.evaluation.protocol import run_protocol
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.model.config import ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.train import TrainConfig

    feats, ann, clip_name, clip_weights = dataset
    return run_protocol(
        ProtocolConfig("thumos14", "75_25", splits=(0, 1)), feats, ann, work, load_clip(clip_name, str(clip_weights)),
        model_cfg=ModelConfig(**TINY_MODEL), data_cfg=DataConfig(num_snippets=16, overlap=0.5),
        train_cfg=TrainConfig(epochs=1, lr=lr, batch_size=16), device="cpu", progress=False,
    )


def test_zero_shot_protocol_end_to_end_and_resume(dataset, tmp_path):
    work = tmp_path / "work"
    summary = _run_library(dataset, work)
    assert summary == json.loads((work / "results.json").read_text())
    assert set(summary["rows"]) == {"clip", "both", "stale", "foreground"}
    assert summary["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert summary["test_videos"] == 21 and summary["test_videos_with_features"] == 20
    for row in summary["rows"].values():
        assert row["splits"] == [0, 1]
        assert all(0.0 <= m <= 1.0 for m in row["mAP_mean"]) and row["average_mAP_std"] >= 0.0
    # The baseline finds the constructed unseen actions (the one video without features is a miss).
    assert summary["rows"]["clip"]["average_mAP_mean"] > 0.3
    for k in (0, 1):
        for method in ("both", "stale", "foreground"):
            ev = json.loads((work / f"split_{k}" / f"{method}_eval.json").read_text())
            assert sorted(ev["per_class"]) == sorted(load_split(f"thumos14/75_25/{k}")[1])
            preds = json.loads((work / f"split_{k}" / f"{method}_predictions.json").read_text())
            assert {s["label"] for v in preds["results"].values() for s in v} <= set(ev["per_class"])
            assert preds["external_data"]["mode"] == "stale"
            assert preds["external_data"]["new_names"] == method
        assert (work / f"split_{k}" / "model.pt").is_file() and (work / f"split_{k}" / "train.json").is_file()
    md = (work / "results.md").read_text()
    assert "| STALE | 2 |" in md and "| STALE's where, CLIP's names | 2 |" in md and "paper Table 1" in md
    assert "| STALE as shipped | 2 |" in md and "(--new-names both, the default)" in md
    assert "training-free CLIP (baseline)" in md and "(--new-names foreground)" in md

    # Rerun: everything is done, nothing is trained or detected again, same numbers.
    (work / "results.json").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in work.glob("split_*/*")}
    assert _run_library(dataset, work)["rows"] == summary["rows"]
    assert {p: p.stat().st_mtime_ns for p in work.glob("split_*/*")} == mtimes
    # A split whose evaluation is missing is redone from its checkpoint (no retraining).
    (work / "split_1" / "stale_eval.json").unlink()
    (work / "split_0" / "foreground_eval.json").unlink()
    again = _run_library(dataset, work)
    assert again["rows"]["stale"]["per_split"] == summary["rows"]["stale"]["per_split"]
    assert again["rows"]["foreground"]["per_split"] == summary["rows"]["foreground"]["per_split"]
    assert (work / "split_1" / "model.pt").stat().st_mtime_ns == mtimes[work / "split_1" / "model.pt"]

    # Other settings in the same work dir are refused.
    with pytest.raises(InputError, match="other settings"):
        _run_library(dataset, work, lr=0.5)


def test_cli_zero_shot_baseline_only(dataset, tmp_path):
    work = tmp_path / "work"
    res = _run(dataset, work, "--no-train")
    assert res.exit_code == 0, res.output
    assert "training-free CLIP" in res.output and "±" in res.output and "paper Table 1" in res.output
    assert "(--new-names clip)" in res.output  # what the row is, in `stale detect` terms
    summary = json.loads((work / "results.json").read_text())
    assert set(summary["rows"]) == {"clip"} and not (work / "split_0" / "model.pt").exists()
    assert json.loads((work / "protocol.json").read_text())["train_config"]["ignore_unseen"] is True  # left out
    res = _run(dataset, work, "--no-train")
    assert res.exit_code == 0 and "already evaluated" in res.output


def test_zero_shot_bad_inputs(dataset, tmp_path):
    res = _run(dataset, tmp_path / "w", "--splits", "3-12")
    assert res.exit_code == 1 and "split numbers must be in 0-9" in res.output
    feats, ann, clip_name, clip_weights = dataset
    res = CliRunner().invoke(app, ["zero-shot", "--dataset", "ucf101", "--features", str(feats), "--annotations",
                                   str(ann), "--work-dir", str(tmp_path / "w"), "--clip-model", clip_name,
                                   "--clip-weights", str(clip_weights)])
    assert res.exit_code == 1 and "--dataset must be one of" in res.output


def test_parse_splits_and_summary():
    assert parse_splits("0-2,7") == (0, 1, 2, 7)
    assert parse_splits("3") == (3,)
    with pytest.raises(InputError):
        parse_splits("a-b")
    cfg = ProtocolConfig("activitynet13", "50_50", splits=(0, 1))
    tious = [0.5, 0.75, 0.95]
    done = {0: {"mAP": [0.4, 0.2, 0.0], "average_mAP": 0.2}, 1: {"mAP": [0.2, 0.2, 0.1], "average_mAP": 0.1}}
    s = summarise(cfg, tious, {"stale": done}, 10, 12)
    row = s["rows"]["stale"]
    np.testing.assert_allclose(row["mAP_mean"], [0.3, 0.2, 0.05])
    np.testing.assert_allclose(row["mAP_std"], [0.1, 0.0, 0.05])  # population std over splits
    assert row["average_mAP_mean"] == pytest.approx(0.15) and row["average_mAP_std"] == pytest.approx(0.05)
    assert s["paper"]["mAP"] == [32.1, 20.7, 5.9] and s["paper"]["average_mAP"] == 20.5
    md = markdown(s)
    assert "| STALE | 2 | 30.0 ± 10.0 | 20.0 ± 0.0 | 5.0 ± 5.0 | 15.0 ± 5.0 |" in md


def test_protocol_baseline_uses_the_dataset_preset(tmp_path, tiny_clip_name, tiny_clip_weights, monkeypatch):
    """The protocol's training-free baseline on ActivityNet detects with sigma 0.75 and top 100."""
    import stale_cli.detection.detect as detect_module
    from stale_cli.evaluation.protocol import ProtocolConfig, run_protocol
    from stale_cli.features.clip_backbone import load_clip

    seen = []
    real = detect_module.Detector.__init__

    def spy(self, settings, *a, **kw):
        real(self, settings, *a, **kw)
        seen.append((self.mode, self.detect_cfg.nms_sigma, self.detect_cfg.top_k))

    monkeypatch.setattr(detect_module.Detector, "__init__", spy)
    from stale_cli.model.data.splits import load_split
    from stale_cli.sidecar import write_features

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


@pytest.mark.parametrize("splits", ["0-99999999", "3-1" + "0" * 30, "5-12", "0-9,10-99999999999"])
def test_huge_split_ranges_are_refused_before_they_are_made(tmp_path, splits):
    from stale_cli.errors import InputError
    from stale_cli.evaluation.protocol import parse_splits

    with pytest.raises(InputError, match="split numbers must be in 0-9"):
        parse_splits(splits)
    ann = tmp_path / "ann.json"
    ann.write_text('{"database": {}}')
    r = CliRunner().invoke(app, ["zero-shot", "--dataset", "thumos14", "--features", str(tmp_path), "-a", str(ann),
                                 "--work-dir", str(tmp_path / "w"), "--splits", splits])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "--splits" in r.stderr and "Traceback" not in r.output


def test_zero_shot_on_your_own_splits(dataset, tmp_path):
    """--unseen-file: each line one split's unseen names (any spelling of the labels); the seen classes are every
    other training-subset label; no paper row; the table and results name the file and each split's classes."""
    from stale_cli.model.checkpoint import read_checkpoint

    unseen = tmp_path / "unseen.txt"
    unseen.write_text("# my own held-out names\nbaseball pitch, Billiards\n\nhigh-jump\n")
    work = tmp_path / "work"
    feats, ann, clip_name, clip_weights = dataset
    args = ["zero-shot", "--dataset", "thumos14", "--unseen-file", str(unseen), "--features", str(feats),
            "--annotations", str(ann), "--work-dir", str(work), "--epochs", "1", "--batch-size", "8",
            "--num-snippets", "16", "--clip-model", clip_name, "--clip-weights", str(clip_weights), "--device", "cpu",
            "--no-progress"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "thumos14 preset, own splits (unseen.txt)" in res.output and "paper Table 1" not in res.output
    assert "STALE's where, CLIP's names" in res.output and "training-free CLIP (baseline)" in res.output
    summary = json.loads((work / "results.json").read_text())
    assert summary["setting"] == "own" and summary["paper"] is None
    assert summary["unseen_sets"] == {"0": ["baseball pitch", "Billiards"], "1": ["high-jump"]}
    assert set(summary["rows"]) == {"clip", "both", "stale", "foreground"}
    assert all(row["splits"] == [0, 1] for row in summary["rows"].values())
    for k, expected in ((0, ["BaseballPitch", "Billiards"]), (1, ["HighJump"])):  # the annotations' spellings
        for method in ("clip", "both", "stale", "foreground"):
            ev = json.loads((work / f"split_{k}" / f"{method}_eval.json").read_text())
            assert sorted(ev["per_class"]) == expected
        _, info = read_checkpoint(work / f"split_{k}" / "model.pt")
        assert sorted(info.class_names) == sorted(c for c in _classes() if c not in expected)  # 18 / 19 seen
    # Held-out names are background in training, as actions nobody annotated are in a checkpoint trained on all
    # of a user's names; --unseen-left-out leaves them out of the losses, as the standard splits do by default.
    assert json.loads((work / "protocol.json").read_text())["train_config"]["ignore_unseen"] is False
    res = CliRunner().invoke(app, [*args[:args.index("--work-dir") + 1], str(tmp_path / "left_out"),
                                   *args[args.index("--work-dir") + 2:], "--unseen-left-out", "--no-train"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "left_out" / "protocol.json").read_text())["train_config"]["ignore_unseen"] is True
    md = (work / "results.md").read_text()
    assert "own splits (unseen.txt)" in md and "paper Table 1" not in md
    assert "- split 0: baseball pitch, Billiards" in md and "- split 1: high-jump" in md

    # The same splits from a renamed file resume the run; other splits in the same work dir are refused.
    renamed = tmp_path / "renamed.txt"
    renamed.write_text(unseen.read_text())
    res = CliRunner().invoke(app, [a if a != str(unseen) else str(renamed) for a in args], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "already evaluated" in res.output
    other = tmp_path / "other.txt"
    other.write_text("Billiards\n")
    res = CliRunner().invoke(app, [a if a != str(unseen) else str(other) for a in args])
    assert res.exit_code == 1 and "other settings" in error_lines(res)[0]


@pytest.mark.parametrize("text, extra, message", [
    ("Billiards\n", ["--setting", "50_50"], "--setting chooses among the standard splits"),
    ("Billiards\nDiving\n", ["--splits", "2"], "split numbers must be in 0-1"),
    ("Billiards,,Diving\n", [], "unseen.txt:1: empty class name"),
    ("# nothing\n\n", [], "no split in it"),
    ("Billiards, billiards\n", [], "unseen.txt:1: duplicate class name 'billiards'"),
    ("Diving\nhigh jump, HIGHJUMP\n", [], "unseen.txt:2: duplicate class name 'HIGHJUMP'"),
    ("Billiards, knitting\n", [], "'knitting' not found in the annotations"),
])
def test_zero_shot_own_splits_bad_inputs(dataset, tmp_path, text, extra, message):
    unseen = tmp_path / "unseen.txt"
    unseen.write_text(text)
    feats, ann, clip_name, clip_weights = dataset
    res = CliRunner().invoke(app, ["zero-shot", "--dataset", "thumos14", "--unseen-file", str(unseen),
                                   "--features", str(feats), "--annotations", str(ann), "--work-dir",
                                   str(tmp_path / "w"), "--clip-model", clip_name, "--clip-weights",
                                   str(clip_weights), "--no-train", "--no-progress", *extra])
    assert res.exit_code == 1, res.output
    lines = error_lines(res)
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_own_splits_config():
    from stale_cli.evaluation.protocol import ProtocolConfig

    cfg = ProtocolConfig("thumos14", unseen_sets=(("a", "b"), ("c",), ("d",)), unseen_source="u.txt")
    assert cfg.setting == "own" and cfg.splits == (0, 1, 2) and cfg.num_splits == 3
    assert cfg.split_name(1) == "1 of u.txt"
    seen, unseen = cfg.vocabulary(0, ["A", "B", "C", "D"], ["A", "B", "C"])
    assert unseen == ["A", "B"] and seen == ["C"]
    with pytest.raises(Exception, match="nothing is left to train on"):
        cfg.vocabulary(0, ["A", "B"], ["A", "B"])
    with pytest.raises(InputError, match="splits must be in 0-2"):
        ProtocolConfig("thumos14", unseen_sets=(("a",), ("b",), ("c",)), splits=(3,))
    assert ProtocolConfig("thumos14").splits == tuple(range(10))
    # Held-out names are background in an own split's training, left out on the standard splits.
    assert cfg.default_train_config().ignore_unseen is False
    assert ProtocolConfig("thumos14").default_train_config().ignore_unseen is True
    assert parse_splits("0-2", 3) == (0, 1, 2)


def test_read_unseen_file(tmp_path):
    from stale_cli.evaluation.protocol import read_unseen_file

    f = tmp_path / "u.txt"
    f.write_bytes("\ufeffBilliards, Diving\n  # a comment\n\nHighJump\n".encode("utf-8"))  # a BOM, as Excel writes
    assert read_unseen_file(f) == (("Billiards", "Diving"), ("HighJump",))
    with pytest.raises(InputError, match="unseen-classes file not found"):
        read_unseen_file(tmp_path / "missing.txt")
