"""Issue 17, the second reliability round (items 8, 10-19, 21-24): file names that are not UTF-8, terminal escapes,
crafted checkpoints, sidecars, annotations, lists and class files. Each bad input is one ``error:`` line, never a
traceback; a batch goes on past it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.fileio import write_features

DIM = 32  # the tiny CLIP's embedding width
LATIN1 = os.fsdecode(b"caf\xe9")  # a Latin-1 file name: not UTF-8, so Python holds it with a surrogate escape
ESC_TITLE = "\x1b]0;owned\x07"  # retitles a terminal that prints it raw


def features(rows: int = 24, seed: int = 0) -> tuple[np.ndarray, dict]:
    feats = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(rows)], "duration": rows / 4, "source": "synthetic",
            "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows}
    return feats, meta


@pytest.fixture
def run(tiny_clip_name, tiny_clip_weights):
    """``run(command, *args, clip=True)``: the command through CliRunner, asserting it raised nothing."""
    def invoke(command, *args, clip=True):
        extra = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights)] if clip else []
        r = CliRunner().invoke(app, [command, *map(str, args), *extra])
        assert "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        return r
    return invoke


def detect_args(*args, classes="high jump,pole vault"):
    return ("detect", *args, "-c", classes, "--no-progress")


def error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


# ---------------------------------------------------------------- 10: file names that are not UTF-8


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


def test_latin1_video_plays_from_the_report_and_extracts(run, tmp_path, videos):
    video = tmp_path / f"{LATIN1}.mp4"
    shutil.copy(videos["single"]["path"], video)
    r = run(*detect_args(video, "--html", tmp_path / "r.html", "-o", tmp_path / "o.srt",
                         "--cache-features", tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert 'src="caf%E9.mp4"' in (tmp_path / "r.html").read_text(encoding="utf-8")  # the file's own bytes
    assert sorted(os.listdir(tmp_path / "cache")) == ["caf\\xe9.json", "caf\\xe9.npy"]
    r = run("extract-features", video, "--out", tmp_path / "ex", "--no-progress")
    assert r.exit_code == 0 and (tmp_path / "ex" / "caf\\xe9.npy").is_file()


# ---------------------------------------------------------------- 16: --html through a symlinked folder


def test_report_finds_the_video_through_a_symlinked_folder(run, tmp_path, videos):
    from stale_cli.report import relative_src

    (tmp_path / "elsewhere" / "reports").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "reports").symlink_to(tmp_path / "elsewhere" / "reports")
    video = tmp_path / "work" / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    # the browser opens work/reports/r.html and resolves ../match.mp4 without following the link
    assert relative_src(video, tmp_path / "work" / "reports") == "../match.mp4"
    cwd = os.getcwd()
    os.chdir(tmp_path / "work")
    try:
        r = run(*detect_args("match.mp4", "--html", "reports/r.html"))
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    assert 'src="../match.mp4"' in (tmp_path / "elsewhere" / "reports" / "r.html").read_text()


# ---------------------------------------------------------------- 17: terminal escapes printed escaped


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


def test_terminal_text_escapes_controls_and_undecodable_bytes():
    from stale_cli.text import terminal_text, unicode_name

    assert terminal_text("a\x1b[2Jb\x9b1m\tc\nd\x7f") == "a\\x1b[2Jb\\x9b1m\tc\nd\\x7f"
    assert unicode_name(LATIN1) == "caf\\xe9" and terminal_text(LATIN1) == "caf\\xe9"
    assert unicode_name("caf\u00e9 \ud800") == "caf\u00e9 \\ud800"  # a lone surrogate from JSON
    assert terminal_text(terminal_text("\x1b")) == "\\x1b"
