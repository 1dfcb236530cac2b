"""Two kinds of defaults: `stale detect` reduces the ranked list to what a person reads; `--all` keeps the list mAP
needs, and `stale evaluate` scores it exactly as the library's full list."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.detection.detections import Segment
from stale_cli.detection.reading import BELOW_FLOOR, OVER_LIMIT, ReadingConfig, for_reading, overlap, reading_parents

from feature_files import run_detect  # tests/ is on sys.path (rootdir conftest)


def test_overlap_is_tiou():
    assert overlap(0, 10, 2, 4) == pytest.approx(0.2)  # inside a long one: a separate instance, often
    assert overlap(0, 10, 5, 15) == pytest.approx(1 / 3)
    assert overlap(0, 1, 1, 2) == 0.0 and overlap(0, 1, 5, 6) == 0.0
    assert overlap(3, 3, 3, 3) == 0.0


def test_floor_alternatives_and_per_class_limit():
    segs = [Segment("jump", 10, 20, 0.9, 0),
            Segment("jump", 11, 19, 0.5, 0),  # tIoU 0.8 with the first: an alternative of it
            Segment("jump", 19, 30, 0.4, 0),  # tIoU 0.05: a detection of its own
            Segment("run", 12, 18, 0.3, 1),  # another class may overlap
            Segment("jump", 40, 45, 0.05, 0),  # under the floor
            Segment("jump", 50, 55, 0.2, 0)]
    cfg = ReadingConfig(min_score=0.1, per_class=2, max_overlap=0.3)
    assert reading_parents(segs, cfg) == [0, 0, 2, 3, BELOW_FLOOR, OVER_LIMIT]
    assert for_reading(segs, cfg) == [segs[0], segs[2], segs[3]]
    # the order of the input does not change who stands for whom
    shuffled = [segs[5], segs[1], segs[4], segs[0], segs[3], segs[2]]
    assert set(map(id, for_reading(shuffled, cfg))) == set(map(id, for_reading(segs, cfg)))
    assert for_reading(segs, ReadingConfig(min_score=0, per_class=100, max_overlap=1.0)) == segs


def test_detect_reads_by_default_and_all_keeps_the_ranked_list(feature_dir, tiny_clip_name,
                                                                 tiny_clip_weights, tmp_path):
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.metric import evaluate_detection

    npy = feature_dir / "game.npy"
    classes = ["high jump", "pole vault"]
    common = [str(npy), "--classes", ",".join(classes)]
    assert run_detect([*common, "--all", "-o", str(tmp_path / "all.json")], tiny_clip_name, tiny_clip_weights).exit_code == 0
    assert run_detect([*common, "-o", str(tmp_path / "read.json")], tiny_clip_name, tiny_clip_weights).exit_code == 0
    full = json.loads((tmp_path / "all.json").read_text())
    read = json.loads((tmp_path / "read.json").read_text())
    assert full["external_data"]["reading"] is None
    assert read["external_data"]["reading"]["min_score"] == ReadingConfig().min_score

    # --all is the library's list, untouched; the default is that list reduced
    clip = load_clip(tiny_clip_name, str(tiny_clip_weights), precision="auto")  # as the command loads it
    video = Detector(DetectSettings(classes=classes, clip_model=tiny_clip_name), clip=clip).detect(npy)

    def same(written: list, segments: list) -> bool:
        return ([w["label"] for w in written] == [s.label for s in segments] and
                [x for w in written for x in (*w["segment"], w["score"])] == pytest.approx(
                    [x for s in segments for x in (s.start, s.end, s.score)], abs=1e-6))

    assert same(full["results"]["game"], video.segments)
    kept = for_reading(video.segments)
    assert 0 < len(kept) < len(video.segments)
    assert same(read["results"]["game"], kept)

    # stale evaluate on the --all file gives the mAP of the library's list
    db = {"game": {"subset": "test", "duration": 60.0, "annotations": [
        {"segment": [s.start, s.end], "label": s.label} for s in kept[:2]]}}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": db}))
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "all.json"), "-a", str(ann), "-o", "-"])
    assert r.exit_code == 0, r.output
    gt = {"game": [(s.label, s.start, s.end) for s in kept[:2]]}
    expected = evaluate_detection(gt, {"game": [(s.label, s.start, s.end, s.score) for s in video.segments]},
                                  json.loads(r.stdout)["tiou"])
    assert json.loads(r.stdout)["average_mAP"] == pytest.approx(expected["average_mAP"])


def test_min_score_and_top_k_act_on_what_is_read(feature_dir, tiny_clip_name, tiny_clip_weights,
                                                  tmp_path):
    common = [str(feature_dir / "game.npy"), "--classes", "high jump,pole vault"]
    r = run_detect([*common, "--top-k", "1", "--min-score", "0", "-o", str(tmp_path / "one.json")], tiny_clip_name,
            tiny_clip_weights)
    assert r.exit_code == 0, r.output
    one = json.loads((tmp_path / "one.json").read_text())
    assert sorted(s["label"] for s in one["results"]["game"]) == ["high jump", "pole vault"]  # one per class
    assert one["external_data"]["reading"]["per_class"] == 1
    r = run_detect([*common, "--all", "--top-k", "3", "-o", str(tmp_path / "three.json")], tiny_clip_name, tiny_clip_weights)
    assert len(json.loads((tmp_path / "three.json").read_text())["results"]["game"]) == 3  # per video with --all

    # stale evaluate says when a file was reduced for reading
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"game": {"subset": "test", "duration": 60.0, "annotations": [
        {"segment": [1, 2], "label": "high jump"}]}}}))
    for name, warned in (("one.json", True), ("three.json", False)):
        r = CliRunner().invoke(app, ["evaluate", str(tmp_path / name), "-a", str(ann)])
        assert r.exit_code == 0, r.output
        assert ("reduced for reading" in r.stderr and "stale detect --all" in r.stderr) is warned, r.stderr
