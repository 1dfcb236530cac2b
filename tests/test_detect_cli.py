"""``stale detect`` end to end with CliRunner: feature files, a generated video, outputs, and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.sidecar import read_features, write_features

from feature_files import (  # tests/ is on sys.path (rootdir conftest)
    BAD_SIDECARS, DIM, ESC_TITLE, LATIN1, detect, detect_args, error_lines, features, good_features, huge_header,
    run_detect, sidecar, write_pair,
)


def test_detect_feature_file_to_json_csv_table(feature_dir, tiny_clip_name, tiny_clip_weights, tmp_path):
    args = [str(feature_dir / "game.npy"), "--classes", "high jump,pole vault", "--all", "--top-k", "3"]
    r = run_detect([*args, "--output", str(tmp_path / "p.json")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    obj = json.loads((tmp_path / "p.json").read_text())
    assert obj["external_data"]["mode"] == "clip" and obj["external_data"]["classes"] == ["high jump", "pole vault"]
    segs = obj["results"]["game"]
    assert len(segs) == 3
    best = max(segs, key=lambda s: s["score"])
    # a clean segment: its class probability (~1) times its mask contrast (the smoothed curve's flanks cost some)
    assert best["label"] in ("high jump", "pole vault") and best["score"] > 0.6

    r = run_detect([*args, "-o", str(tmp_path / "outdir/"), "--format", "csv"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "outdir" / "game.csv").open()))
    assert len(rows) == 3 and set(rows[0]) == {"video", "label", "start", "end", "score"}

    r = run_detect(args, tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "high jump" in r.stdout and "game" in r.stdout


def test_detect_video_batch_with_a_bad_file(videos, bad_files, tiny_clip_name, tiny_clip_weights, tmp_path):
    out = tmp_path / "out"
    r = run_detect([str(videos["cfr25"]["path"]), str(bad_files["garbage"]), "--classes", "a dog,a cat", "-o", str(out),
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
        (["--classes", "a", "--new-names", "neither"], "--new-names"),
    ],
)
def test_bad_options_one_line(feature_dir, tiny_clip_name, tiny_clip_weights, extra, message):
    r = run_detect([str(feature_dir / "game.npy"), *extra], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output


def test_feature_file_without_sidecar_and_other_checkpoint(tmp_path, feature_dir, tiny_clip_name, tiny_clip_weights):
    np.save(tmp_path / "lonely.npy", np.zeros((10, 32), np.float16))
    r = run_detect([str(tmp_path / "lonely.npy"), str(feature_dir / "game.npy"), "--classes", "a,b",
             "-o", str(tmp_path / "o")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "no sidecar" in r.output
    assert (tmp_path / "o" / "game.json").is_file()  # the other input still ran
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = run_detect([str(feature_dir / "game.npy"), "--classes", "a", "--checkpoint", str(tmp_path / "bad.pt")],
            tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "not a stale checkpoint" in r.output


def test_detect_batch_reports_each_bad_feature_file_once_and_goes_on(tmp_path, tiny_clip_name, tiny_clip_weights):
    d = tmp_path / "feats"
    bad = [write_pair(d / f"{name}.npy", good_features(), sidecar(40, **change))
           for name, change in BAD_SIDECARS.items()]
    bad.append(huge_header(d / "huge.npy"))
    bad.append(write_pair(d / "big.npy", np.full((40, DIM), 1e300), sidecar(40)))
    write_pair(d / "good.npy", good_features(), sidecar(40))
    r = detect(d, "-c", "high jump,pole vault", "-o", tmp_path / "out", clip_name=tiny_clip_name,
               clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = error_lines(r)
    for path in bad:
        # One error line names it (the summary's list of failed inputs is not on error: lines).
        assert sum(str(path) in e or str(path.with_suffix(".json")) in e for e in errors) == 1, (path.name, errors)
    assert (tmp_path / "out" / "good.json").is_file()
    assert f"{len(bad)} input(s) failed" in r.stderr


def test_a_damaged_cache_entry_is_extracted_again(videos, tmp_path, tiny_clip_name, tiny_clip_weights):
    cache = tmp_path / "cache"
    write_pair(cache / "cfr25.npy", good_features(), sidecar(40, fps="inf"))
    r = detect(videos["cfr25"]["path"], "-c", "a dog", "--cache-features", cache, "-o", tmp_path / "p.json",
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 0 and "extracting again" in " ".join(r.stderr.split()), r.output
    feats, meta = read_features(cache / "cfr25.npy")
    assert meta.fps == 4.0 and feats.shape == (16, DIM)


@pytest.mark.parametrize("args", [
    ["--fps", "inf"], ["--fps", "nan"], ["--fps", "1e9"], ["--fps", "0"], ["--fps", "1e-300"], ["--batch-size", "0"],
    ["--top-k", "0"], ["--top-k", "100000000000000000000"], ["--min-score", "nan"], ["--min-score", "inf"],
])
def test_detect_numeric_options_are_bounded(args, tmp_path):
    f = write_pair(tmp_path / "v.npy", good_features(), sidecar(40))
    r = CliRunner().invoke(app, ["detect", str(f), "-c", "a dog", *args])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, r.output


def test_class_name_without_words_is_refused(tmp_path):
    f = write_pair(tmp_path / "v.npy", good_features(), sidecar(40))
    for classes in ("_", "high jump,--", "a, _ "):
        r = CliRunner().invoke(app, ["detect", str(f), "--classes", classes])
        assert r.exit_code == 1 and "has no words" in r.stderr, (classes, r.output)


def test_file_class_and_label_text_is_printed_as_is(tmp_path, tiny_clip_name, tiny_clip_weights):
    f = write_pair(tmp_path / "race [final].npy", good_features(), sidecar(40))
    r = detect(f, "-c", "ride [/bike],[bold]swim", "--min-score", "0", "--top-k", "3",
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert "race [final]" in r.stdout and "[bold]swim" in r.stdout
    # The same table on a terminal (rich rendering), with the label that crashed rich's markup parser.
    from rich.console import Console

    from stale_cli.cli.table import print_table
    from stale_cli.detection.detections import Segment, VideoDetections

    console = Console(force_terminal=True, width=120, record=True)
    print_table(VideoDetections("race [final]", "x", 20.0, [Segment("ride [/bike]", 1.0, 2.0, 0.5, 0)],
                                classes=("ride [/bike]",)), console)
    text = console.export_text()
    assert "race [final]" in text and "ride [/bike]" in text and "┃" in text
    missing = tmp_path / "[/x].npy"
    r = detect(missing, f, "-c", "[red]a", clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output and "MarkupError" not in r.output
    assert any("[/x].npy" in e for e in error_lines(r)), r.stderr


def test_plot_help_shows_the_extra():
    r = CliRunner().invoke(app, ["detect", "--help"], env={"COLUMNS": "300"})
    assert "stale-cli[plot]" in r.stdout


def test_latin1_feature_file_names_in_every_output(run, tmp_path):
    d = tmp_path / "feats"
    write_features(d / f"{LATIN1}.npy", *features(seed=1))
    write_features(d / "ok.npy", *features(seed=2))
    r = run(*detect_args(d, "-o", tmp_path / "x.csv", "--plot", tmp_path / "p.png", "--html", tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    assert "caf\\xe9," in (tmp_path / "x.csv").read_text(encoding="utf-8")  # the byte, written as \xe9
    assert (tmp_path / "p_caf\\xe9.png").is_file() and (tmp_path / "p_ok.png").is_file()
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "caf\\xe9" in page and "ok" in page
    r = run(*detect_args(d, "-o", tmp_path / "per_video/"))
    assert r.exit_code == 0 and (tmp_path / "per_video" / "caf\\xe9.json").is_file()
    assert "caf\\xe9" in r.stderr  # the "wrote" line, printable
    r = run(*detect_args(d, "-o", "-", "-f", "csv"))  # a pipe takes it too
    assert r.exit_code == 0 and "caf\\xe9," in r.stdout


def test_escape_sequences_in_names_and_labels_are_printed_escaped(run, tmp_path):
    d = tmp_path / f"feats{ESC_TITLE}"
    write_features(d / f"v{ESC_TITLE}.npy", *features(seed=1))
    r = run(*detect_args(d, classes=f"high jump{ESC_TITLE},pole vault"))  # the table of each video on stdout
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "v\\x1b]0;owned\\x07" in r.stdout
    missing = tmp_path / f"gone{ESC_TITLE}.npy"
    r = run(*detect_args(missing, d))
    assert r.exit_code == 1 and "\x1b" not in r.output
    assert any("gone\\x1b]0;owned\\x07.npy" in line for line in error_lines(r)), r.stderr
    r = run(*detect_args(d, "-o", "-", "-f", "csv"))  # data on stdout: written as given to a file or pipe
    assert r.exit_code == 0 and f"v{ESC_TITLE}," in r.stdout


def test_unwritable_cache_folder_is_refused_before_any_work(run, tmp_path, videos):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    r = run(*detect_args(videos["single"]["path"], "-o", tmp_path / "out.json", "--cache-features",
                         tmp_path / "notes.txt" / "cache"))
    assert r.exit_code == 1 and len(error_lines(r)) == 1, r.output
    assert "--cache-features" in error_lines(r)[0] and "cannot write there" in error_lines(r)[0]
    assert "mode:" not in r.stderr  # refused before the model was loaded and any video decoded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_list_with_a_latin1_line_loses_that_line_at_most(run, tmp_path):
    d = tmp_path / "feats"
    write_features(d / f"{LATIN1}.npy", *features(seed=1))
    write_features(d / "ok.npy", *features(seed=2))
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + b"feats/ok.npy\nfeats/caf\xe9.npy\nfeats/gone\xff.npy\n")
    r = run(*detect_args(f"@{listing}", "-o", tmp_path / "out.json"))
    assert r.exit_code == 1, r.output
    (line,) = [ln for ln in error_lines(r) if "gone" in ln and "failed" not in ln]
    assert "gone\\xff.npy" in line and "no such file" in line
    import json

    assert sorted(json.loads((tmp_path / "out.json").read_text())["results"]) == ["caf\\xe9", "ok"]


def test_a_list_that_includes_itself_reports_each_bad_line_once(run, tmp_path):
    write_features(tmp_path / "ok.npy", *features())
    listing = tmp_path / "list.txt"
    listing.write_text(f"ok.npy\nmissing.npy\n@{listing}\n")
    r = run(*detect_args(f"@{listing}", "-o", tmp_path / "out.json"))
    assert r.exit_code == 1, r.output
    errors = [ln for ln in error_lines(r) if "failed:" not in ln]
    assert sum("missing.npy" in ln for ln in errors) == 1, r.stderr
    assert sum("includes itself" in ln for ln in errors) == 1, r.stderr
    assert (tmp_path / "out.json").is_file()


@pytest.mark.parametrize("option, value, expected", [
    ("--batch-size", "100000000", "--batch-size must be a number in [1, 65536], got 100000000"),
    ("--top-k", "100000000", "--top-k must be a number in [1, 1048576], got 100000000"),
    ("--fps", "20000", "--fps must be a number in [0.001, 1000], got 20000"),
])
def test_numbers_in_messages_are_printed_as_typed(run, tmp_path, option, value, expected):
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", option, value))
    assert r.exit_code == 1 and error_lines(r) == [f"error: {expected}"], r.output


# ---------------------------------------------------------------- non-UTF-8 names; an fps resampling to too many rows


def test_latin1_video_plays_from_the_report_and_extracts(run, tmp_path, videos):
    video = tmp_path / f"{LATIN1}.mp4"
    shutil.copy(videos["single"]["path"], video)
    r = run(*detect_args(video, "--html", tmp_path / "r.html", "-o", tmp_path / "o.srt",
                         "--cache-features", tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert 'src="caf%E9.mp4"' in (tmp_path / "r.html").read_text(encoding="utf-8")  # the file's own bytes
    assert sorted(os.listdir(tmp_path / "cache")) == ["caf\\xe9.json", "caf\\xe9.npy"]
    r = run("extract-features", video, "--output", tmp_path / "ex", "--no-progress")
    assert r.exit_code == 0 and (tmp_path / "ex" / "caf\\xe9.npy").is_file()


def test_tiny_sidecar_fps_is_refused_before_resampling(run, tmp_path, good_checkpoint):
    rows = 5000  # at 0.001 fps: 5 million seconds, 20 million rows at the checkpoint's 4 fps (2.4 GiB)
    feats = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float16)
    meta = {"fps": 0.001, "timestamps": [k * 1000.0 for k in range(rows)], "duration": rows * 1000.0,
            "source": "synthetic", "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows}
    write_features(tmp_path / "slow.npy", feats, meta)
    write_features(tmp_path / "ok.npy", *features())
    r = run(*detect_args(tmp_path / "slow.npy", tmp_path / "ok.npy", "--checkpoint", good_checkpoint, "-o",
                         tmp_path / "out.json"), clip=False)
    assert r.exit_code == 1
    (line,) = [ln for ln in error_lines(r) if "slow.npy" in ln and "input(s) failed" not in ln]
    assert "would make 20000000 rows" in line and "sidecar's fps is likely wrong" in line
    assert '"ok"' in (tmp_path / "out.json").read_text()  # the batch went on
