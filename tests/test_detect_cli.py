"""``stale detect`` end to end with CliRunner: feature files, a generated video, outputs, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.fileio import write_features


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory, tiny_clip_name, tiny_clip_weights):
    from stale_cli.clip_backbone import load_clip
    from stale_cli.clipmode import class_text_features

    from test_detect import CLASSES, constructed_features  # tests/ is on sys.path (rootdir conftest)

    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    feats, meta = constructed_features(class_text_features(clip, CLASSES))
    d = tmp_path_factory.mktemp("cli_feats")
    write_features(d / "game.npy", feats, meta)
    return d


def run(args, tiny_clip_name, tiny_clip_weights):
    base = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress"]
    return CliRunner().invoke(app, ["detect", *args, *base])


def test_detect_feature_file_to_json_csv_table(feature_dir, tiny_clip_name, tiny_clip_weights, tmp_path):
    args = [str(feature_dir / "game.npy"), "--classes", "high jump,pole vault", "--all", "--top-k", "3"]
    r = run([*args, "--output", str(tmp_path / "p.json")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    obj = json.loads((tmp_path / "p.json").read_text())
    assert obj["external_data"]["mode"] == "clip" and obj["external_data"]["classes"] == ["high jump", "pole vault"]
    segs = obj["results"]["game"]
    assert len(segs) == 3
    best = max(segs, key=lambda s: s["score"])
    # a clean segment: its class probability (~1) times its mask contrast (the smoothed curve's flanks cost some)
    assert best["label"] in ("high jump", "pole vault") and best["score"] > 0.6

    r = run([*args, "-o", str(tmp_path / "outdir/"), "--format", "csv"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "outdir" / "game.csv").open()))
    assert len(rows) == 3 and set(rows[0]) == {"video", "label", "start", "end", "score"}

    r = run(args, tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "high jump" in r.stdout and "game" in r.stdout


def test_detect_video_batch_with_a_bad_file(videos, bad_files, tiny_clip_name, tiny_clip_weights, tmp_path):
    out = tmp_path / "out"
    r = run([str(videos["cfr25"]["path"]), str(bad_files["garbage"]), "--classes", "a dog,a cat", "-o", str(out),
             "--cache-features", str(tmp_path / "cache")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1
    assert "garbage.mp4" in r.output and "Traceback" not in r.output
    obj = json.loads((out / "cfr25.json").read_text())  # the good video's output is kept
    assert "cfr25" in obj["results"] and obj["external_data"]["fps"] == 4.0
    assert (tmp_path / "cache" / "cfr25.npy").is_file() and (tmp_path / "cache" / "cfr25.json").is_file()
    assert not (out / "garbage.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "a,,b"], "empty class name"),
        (["--classes", "high jump,High_Jump"], "duplicate class name"),
        (["--classes", "jump " * 80], "too long"),
        (["--classes", "a", "--classes-file", "x"], "not both"),
        (["--classes", "a", "--format", "xml"], "--format"),
        (["--classes", "a", "--mode", "fast"], "--mode"),
        (["--classes", "a", "--checkpoint", "missing.pt"], "checkpoint not found"),
        (["--classes", "a", "--plot", "curves.txt"], "cannot write '.txt' images"),
        (["--classes", "a", "--scoring", "best"], "--scoring"),
        (["--classes", "a", "--prior-weight", "2"], "--prior-weight"),
        (["--classes", "a", "--new-names", "both"], "--new-names"),
    ],
)
def test_bad_options_one_line(feature_dir, tiny_clip_name, tiny_clip_weights, extra, message):
    r = run([str(feature_dir / "game.npy"), *extra], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output


def test_feature_file_without_sidecar_and_other_checkpoint(tmp_path, feature_dir, tiny_clip_name, tiny_clip_weights):
    np.save(tmp_path / "lonely.npy", np.zeros((10, 32), np.float16))
    r = run([str(tmp_path / "lonely.npy"), str(feature_dir / "game.npy"), "--classes", "a,b",
             "-o", str(tmp_path / "o")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "no sidecar" in r.output
    assert (tmp_path / "o" / "game.json").is_file()  # the other input still ran
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = run([str(feature_dir / "game.npy"), "--classes", "a", "--checkpoint", str(tmp_path / "bad.pt")],
            tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "not a stale checkpoint" in r.output
