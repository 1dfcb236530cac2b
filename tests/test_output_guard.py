"""Issue 17 items 1-7, 9 and 20: one rule for every file a command writes (stale_cli.guard) and for what is at the
path (stale_cli.fileio.atomic_path): never an input or one of its companions, never another option's output or a
feature sidecar, never a FIFO, device or symlink replaced; a full stdout is one error line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.fileio import read_features, write_features, write_text_atomic

REPO = Path(__file__).resolve().parent.parent
ANNOTATIONS = Path(__file__).parent / "fixtures" / "thumos14_mini.json"
DIM = 32  # the tiny CLIP's embedding width


def features(rows: int = 24, seed: int = 0, source: str = "synthetic") -> tuple[np.ndarray, dict]:
    feats = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(rows)], "duration": rows / 4, "source": source,
            "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows}
    return feats, meta


@pytest.fixture
def feats(tmp_path):
    d = tmp_path / "feats"
    for i in range(2):
        write_features(d / f"v{i}.npy", *features(seed=i))
    return d


@pytest.fixture
def run(tiny_clip_name, tiny_clip_weights):
    def invoke(command, *args, clip=True):
        extra = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights)] if clip else []
        r = CliRunner().invoke(app, [command, *map(str, args), *extra])
        assert "Traceback" not in r.output and not isinstance(r.exception, Exception) or r.exit_code in (0, 1), r
        assert not (r.exception and not isinstance(r.exception, SystemExit)), r.exception
        return r
    return invoke


def detect_args(*args):
    return ("detect", *args, "-c", "high jump,pole vault", "--no-progress")


def error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def snapshot(*paths) -> dict:
    return {p: (p.read_bytes() if p.is_file() else None) for p in paths}


# ---------------------------------------------------------------- 1, 2, 20: detect's outputs against its inputs


def test_html_is_checked_against_the_inputs(run, feats, tmp_path, videos):
    video = tmp_path / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    before = snapshot(video, feats / "v0.json", feats / "v1.json")
    r = run(*detect_args(video, "--html", video))
    assert r.exit_code == 1 and "--html" in r.stderr and "is the input" in r.stderr
    r = run(*detect_args(feats / "v0.npy", "--html", feats / "v0.json"))
    assert r.exit_code == 1 and "is the sidecar of the input v0.npy" in r.stderr
    r = run(*detect_args(feats / "v0.npy", "--html", feats / "v1.json"))  # a sidecar, though not of an input
    assert r.exit_code == 1 and "--html" in r.stderr and "feature file v1.npy" in r.stderr
    assert len(error_lines(r)) == 1 and snapshot(video, feats / "v0.json", feats / "v1.json") == before


def test_output_is_checked_against_classes_checkpoint_list_and_weights(run, feats, tmp_path, tiny_clip_weights):
    classes = tmp_path / "classes.txt"
    classes.write_text("high jump\npole vault\n")
    checkpoint = tmp_path / "ck" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not read: refused before any model loads")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{feats / 'v0.npy'}\n")
    weights = tmp_path / "clip.pt"
    shutil.copy(tiny_clip_weights, weights)
    before = snapshot(classes, checkpoint, listing, weights)
    cases = [
        (["detect", feats / "v0.npy", "--classes-file", classes, "-o", classes], "the classes file"),
        ([*detect_args(feats / "v0.npy", "--checkpoint", checkpoint, "-o", checkpoint)], "the checkpoint"),
        ([*detect_args(f"@{listing}", "-o", tmp_path / "." / "inputs.txt")], "the list file"),
        ([*detect_args(f"@{listing}", "--plot", listing)], "the list file"),
    ]
    for args, what in cases:
        r = run(*args, "--no-progress")
        assert r.exit_code == 1 and what in r.stderr and len(error_lines(r)) == 1, (args, r.output)
    r = CliRunner().invoke(app, [*map(str, detect_args(feats / "v0.npy", "-o", weights)), "--clip-model",
                                 "stale-tiny", "--clip-weights", str(weights)])
    assert r.exit_code == 1 and "the CLIP weights" in r.stderr
    assert snapshot(classes, checkpoint, listing, weights) == before


def test_two_options_writing_one_file_are_refused_and_plots_are_named(run, feats, tmp_path):
    out = tmp_path / "out.json"
    r = run(*detect_args(feats / "v0.npy", "-o", out, "--html", out))
    assert r.exit_code == 1 and "--html" in r.stderr and "--output" in r.stderr and not out.exists()
    r = run(*detect_args(feats / "v0.npy", feats / "v1.npy", "--plot", tmp_path / "p.png", "--html",
                         tmp_path / "p_v1.png"))
    assert r.exit_code == 1 and "--plot" in r.stderr and "--html" in r.stderr

    pytest.importorskip("matplotlib")
    r = run(*detect_args(feats, "-o", out, "--plot", tmp_path / "p.png"))
    assert r.exit_code == 0, r.output
    wrote = [ln.removeprefix("wrote ") for ln in r.stderr.splitlines() if ln.startswith("wrote ")]
    assert sorted(wrote) == sorted([str(out), str(tmp_path / "p_v0.png"), str(tmp_path / "p_v1.png")])


# ---------------------------------------------------------------- 3: train, and the other commands


def test_train_out_is_checked_against_annotations_and_its_last_companion(run, feats, tmp_path):
    ann = tmp_path / "ann.json"
    shutil.copy(ANNOTATIONS, ann)
    r = run("train", "--features", feats, "--annotations", ann, "--out", ann, "--epochs", "1", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr, r.output
    last = tmp_path / "model.last.json"  # what --out model.json writes every epoch
    shutil.copy(ANNOTATIONS, last)
    r = run("train", "--features", feats, "--annotations", last, "--out", tmp_path / "model.json", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr and len(error_lines(r)) == 1
    assert ann.read_bytes() == last.read_bytes() == ANNOTATIONS.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "feats", "model.last.json"]
    r = run("train", "--features", feats, "--annotations", ann, "--out", feats / "v0.json", clip=False)
    assert r.exit_code == 1 and "feature" in r.stderr and (feats / "v0.json").is_file()
    read_features(feats / "v0.npy")


def test_zero_shot_and_extract_check_their_outputs(run, tmp_path, videos):
    work = tmp_path / "work"
    work.mkdir()
    ann = work / "results.json"
    shutil.copy(ANNOTATIONS, ann)
    r = run("zero-shot", "--dataset", "thumos14", "--features", tmp_path, "-a", ann, "--work-dir", work,
            "--splits", "0", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr and ann.read_bytes() == ANNOTATIONS.read_bytes()

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(videos["single"]["path"], tmp_path / "inputs.mp4")
    listing = out / "inputs.json"  # an @list file where the features of inputs.mp4 would go
    listing.write_text(f"{tmp_path / 'inputs.mp4'}\n")
    r = run("extract-features", f"@{listing}", "--out", out, "--no-progress")
    assert r.exit_code == 1 and "the list file" in r.stderr and listing.read_text().startswith(str(tmp_path))


# ---------------------------------------------------------------- 4: extract then detect into the same folder


def test_detect_output_never_lands_on_feature_sidecars(run, tmp_path, videos):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(videos["single"]["path"], src / "bikes.mp4")
    out = tmp_path / "out"
    assert run("extract-features", src, "--out", out, "--no-progress").exit_code == 0
    before = snapshot(out / "bikes.json", out / "bikes.npy")
    r = run(*detect_args(src, "-o", out))
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "bikes.json" in r.stderr, r.output
    assert "sidecar" in r.stderr and snapshot(out / "bikes.json", out / "bikes.npy") == before
    read_features(out / "bikes.npy")
    assert run(*detect_args(src, "-o", out, "--format", "csv")).exit_code == 0  # another extension is fine

    lone = tmp_path / "lone.json"  # a sidecar whose array is elsewhere still reads as one
    lone.write_text(json.dumps(features()[1]))
    r = run(*detect_args(out / "bikes.npy", "-o", lone))
    assert r.exit_code == 1 and "a feature sidecar" in r.stderr and json.loads(lone.read_text())["fps"] == 4.0


# ---------------------------------------------------------------- 5: what is at the path


def test_a_symlink_is_followed_not_replaced(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "sub" / "made.json")
    write_text_atomic(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.json").read_text() == "x"


def test_a_fifo_is_written_into(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]  # no temporary left beside it


def test_a_socket_or_directory_is_refused(tmp_path):
    sock_path = tmp_path / "s.json"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(sock_path))
        with pytest.raises(InputError, match="it is a socket"):
            write_text_atomic(sock_path, "x")
    finally:
        server.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(InputError, match="it is a directory"):
        write_text_atomic(tmp_path / "d.json", "x")


@pytest.fixture
def devices(tmp_path):
    """Private copies of /dev/null and /dev/full (root only: mknod)."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    made = {}
    for name, minor in (("null", 3), ("full", 7)):
        made[name] = tmp_path / f"dev-{name}"
        try:
            os.mknod(made[name], 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        except PermissionError:
            pytest.skip("mknod not permitted here")
    return made


def test_devices_are_written_into_and_a_full_one_is_one_line(run, devices, feats, tmp_path):
    write_text_atomic(devices["null"], "gone")
    assert stat.S_ISCHR(os.lstat(devices["null"]).st_mode)
    with pytest.raises(InputError, match="No space left on device; free some space"):
        write_text_atomic(devices["full"], "x")
    r = run(*detect_args(feats, "-o", devices["full"]))
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "No space left" in r.stderr, r.output
    assert stat.S_ISCHR(os.lstat(devices["full"]).st_mode)
    r = run(*detect_args(feats, "-o", devices["null"], "--html", devices["null"].with_name("r.html")))
    assert r.exit_code == 0 and stat.S_ISCHR(os.lstat(devices["null"]).st_mode), r.output
    assert not list(tmp_path.glob(".dev-null*"))  # no journal or lock beside a device


# ---------------------------------------------------------------- 6: --cache-features follows extract's rule


def test_cache_never_replaces_another_videos_or_other_settings_features(run, tmp_path, videos):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(videos["single"]["path"], a / "clip.mp4")
    shutil.copy(videos["late"]["path"], b / "clip.mp4")
    cache = tmp_path / "cache"
    assert run(*detect_args(a / "clip.mp4", "--cache-features", cache)).exit_code == 0
    mine = snapshot(cache / "clip.npy", cache / "clip.json")
    r = run(*detect_args(b / "clip.mp4", "--cache-features", cache))
    assert r.exit_code == 0 and "another video's features" in " ".join(r.stderr.split())
    assert snapshot(cache / "clip.npy", cache / "clip.json") == mine
    (other,) = [p for p in cache.glob("clip-*.npy")]
    assert read_features(other)[1].source == str((b / "clip.mp4").resolve())

    r = run(*detect_args(a / "clip.mp4", "--cache-features", cache, "--fps", "2"))
    assert r.exit_code == 0 and "not cached" in " ".join(r.stderr.split())
    assert snapshot(cache / "clip.npy", cache / "clip.json") == mine


# ---------------------------------------------------------------- 7: a video and its own features are one input


def test_a_video_and_its_features_in_one_folder_are_one_input(run, tmp_path, videos):
    sb = tmp_path / "sb"
    sb.mkdir()
    shutil.copy(videos["single"]["path"], sb / "t1.mp4")
    assert run("extract-features", sb, "--out", sb, "--no-progress").exit_code == 0
    preds = tmp_path / "preds.json"
    r = run(*detect_args(sb, "-o", preds))
    assert r.exit_code == 0, r.output
    assert list(json.loads(preds.read_text())["results"]) == ["t1"]
    assert "warning:" not in r.stderr and "1 video(s) done" in r.stderr


def test_renamed_ids_are_announced(run, tmp_path):
    for d in ("x", "y"):
        write_features(tmp_path / d / "same.npy", *features())
    r = run(*detect_args(tmp_path / "x" / "same.npy", tmp_path / "y" / "same.npy", "-o", tmp_path / "p.json"))
    assert r.exit_code == 0
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and all("same-" in w for w in warnings)


# ---------------------------------------------------------------- 9: a full stdout


def stale_to_dev_full(tmp_path, *args) -> subprocess.CompletedProcess:
    """Run ``stale ARGS > /dev/full`` in a new process that knows the tiny CLIP's config."""
    from conftest import TINY_CLIP_CONFIG, TINY_CLIP_NAME

    config = tmp_path / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    code = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); from stale_cli.cli import main; "
            "sys.argv = ['stale', *sys.argv[2:]]; main()")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-c", code, str(config), *map(str, args)], cwd=REPO, env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("to", [["-o", "-"], []], ids=["dash", "table"])
def test_a_full_stdout_is_one_error_line(tmp_path, feats, tiny_clip_weights, to):
    done = stale_to_dev_full(tmp_path, *detect_args(feats / "v0.npy", *to), "--clip-model", "stale-tiny",
                             "--clip-weights", tiny_clip_weights)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] or [done.stderr]
    assert "cannot write to stdout" in line and "No space left" in line
