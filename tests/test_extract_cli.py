"""`stale extract-features` end to end with Typer's CliRunner and the tiny CLIP."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app

from faults import fail_once, no_partial_files  # tests/ is on sys.path (rootdir conftest)
from feature_files import detect, error_lines, good_features, sidecar, write_pair


@pytest.fixture
def run(tiny_clip_name, tiny_clip_weights):
    def invoke(*args):
        argv = ["extract-features", *map(str, args), "--clip-model", tiny_clip_name,
                "--clip-weights", str(tiny_clip_weights), "--no-progress"]
        result = CliRunner().invoke(app, argv)
        assert "Traceback" not in result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def lines(result, prefix):
    return [l for l in result.output.splitlines() if l.startswith(prefix)]


def test_end_to_end_with_bad_inputs_and_resume(run, videos, bad_files, tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text(f"{videos['ntsc']['path']}\n{bad_files['no_frames']}\n")
    out = tmp_path / "out"
    missing = tmp_path / "missing.mp4"
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    r = run(videos["cfr25"]["path"], f"@{listed}", missing, empty, bad_files["text"], bad_files["truncated"],
            videos["single"]["path"], "--out", out, "--fps", "4", "--batch-size", "3")
    assert r.exit_code == 1
    errors = lines(r, "error:")
    for bad in (missing, empty, bad_files["no_frames"], bad_files["text"]):
        assert sum(str(bad) in e for e in errors) == 1, (bad, r.output)
    warnings = lines(r, "warning:")
    assert any("truncated.mkv" in w for w in warnings) and any("single.mp4" in w for w in warnings)
    assert "done 4, skipped 0" in r.output and "failed 2" in r.output and "frames/s" in r.output
    assert "4 input(s) failed" in r.output  # the two unusable INPUTs and the two undecodable files, listed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{e}" for s in ("cfr25", "ntsc", "truncated", "single") for e in ("npy", "json"))
    feats = np.load(out / "ntsc.npy")
    meta = json.loads((out / "ntsc.json").read_text())
    assert feats.dtype == np.float16 and feats.shape == (13, 32) and meta["num_rows"] == 13
    for key in ("fps", "timestamps", "duration", "source", "clip_model", "clip_weights", "num_frames"):
        assert key in meta

    r = run(videos["cfr25"]["path"], f"@{listed}", "--out", out)  # resume
    assert r.exit_code == 1 and "done 0, skipped 2" in r.output  # no_frames.mp4 still fails
    r = run(videos["cfr25"]["path"], "--out", out, "--overwrite")
    assert r.exit_code == 0 and "done 1, skipped 0" in r.output


def test_shards_split_the_work(run, videos, tmp_path):
    out = tmp_path / "out"
    names = set()
    for i in range(3):
        r = run(videos["cfr25"]["path"].parent, "--out", out, "--shard", f"{i}/3", "--fps", "1")
        assert r.exit_code == 0, r.output
        names |= {p.stem for p in out.glob("*.npy")}
    assert names == {"cfr25", "ntsc", "vfr", "late", "single"}
    r = run(videos["cfr25"]["path"].parent, "--out", out, "--fps", "1")
    assert r.exit_code == 0 and "done 0, skipped 5" in r.output


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/3"], "--shard '3/3'"),
    (["--shard", "x"], "--shard 'x'"),
    (["--fps", "0"], "--fps must be a number in [0.001, 1000], got 0"),
    (["--batch-size", "0"], "--batch-size must be a number in [1, 65536], got 0"),
])
def test_invalid_options(run, videos, tmp_path, args, message):
    r = run(videos["cfr25"]["path"], "--out", tmp_path / "out", *args)
    assert r.exit_code == 1 and len(lines(r, "error:")) == 1 and message in lines(r, "error:")[0]


def test_unwritable_out(run, videos, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run(videos["cfr25"]["path"], "--out", blocker / "feats")
    assert r.exit_code == 1 and len(lines(r, "error:")) == 1
    assert "cannot write there" in r.output and str(blocker) in r.output


def test_nothing_to_do(run, tmp_path):
    r = run(tmp_path / "missing.mp4", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "no videos to extract" in r.output
    assert len(lines(r, "error:")) == 1 and "missing.mp4" in lines(r, "error:")[0]


def test_decoder_choice(run, videos, tmp_path):
    r = run(videos["cfr25"]["path"], "--out", tmp_path / "bad", "--decoder", "ffmpeg")
    assert r.exit_code == 1 and len(lines(r, "error:")) == 1 and "--decoder must be" in r.output
    rows = {}
    for name in ("decord", "pyav"):
        r = run(videos["cfr25"]["path"], "--out", tmp_path / name, "--decoder", name, "--fps", "4")
        assert r.exit_code == 0, r.output
        stem = videos["cfr25"]["path"].stem
        meta = json.loads((tmp_path / name / f"{stem}.json").read_text())
        assert meta["decoder"] == name
        rows[name] = meta["timestamps"]
    assert rows["decord"] == rows["pyav"]  # both decoders sample the same presentation times


@pytest.mark.parametrize("args", [
    ["--fps", "inf"], ["--fps", "-1"], ["--batch-size", "0"], ["--batch-size", "10000000"],
])
def test_extract_numeric_options_are_bounded(args, tmp_path):
    r = CliRunner().invoke(app, ["extract-features", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, r.output


# ---------------------------------------------------------------- out of memory or NaN on one video of a batch


class _OutOfMemoryOnce:
    """A loaded CLIP whose image encoder runs out of the machine's memory on its first call, as a --batch-size too
    large for the RAM does (torch's CPU allocator raises a RuntimeError), then works."""

    def __init__(self, clip, error):
        self.clip, self.error = clip, error

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_images(self, images, batch_size=64):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.clip.encode_images(images, batch_size=batch_size)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
@pytest.mark.parametrize("command", ["extract-features", "extract-features --workers 2", "detect"])
def test_out_of_memory_fails_one_video_and_the_batch_goes_on(tmp_path, videos, monkeypatch, tiny_clip_name,
                                                             tiny_clip_weights, error, command):
    import stale_cli.features.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: _OutOfMemoryOnce(real(*a, **kw), error))
    first, second = videos["cfr25"]["path"], videos["ntsc"]["path"]
    command, *workers = command.split(" ", 1)  # decoding in a thread, or in processes
    where = ["--output", tmp_path / "o", *" ".join(workers).split()] if command == "extract-features" else \
        ["-c", "a dog", "-o", tmp_path / "o.csv"]
    r = CliRunner().invoke(app, [command, str(first), str(second), *map(str, where), "--clip-model", tiny_clip_name,
                                 "--clip-weights", str(tiny_clip_weights), "--no-progress", "--batch-size", "64"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    oom = [ln for ln in error_lines(r) if "out of memory" in ln]
    assert len(oom) == 1 and "smaller --batch-size (e.g. 32)" in oom[0]
    # the video whose frames were encoded first failed (with decoding processes, either one), the other is done
    failed, other = ("cfr25", "ntsc") if "cfr25.mp4" in oom[0] else ("ntsc", "cfr25")
    assert workers or failed == "cfr25"
    if command == "extract-features":
        assert (tmp_path / "o" / f"{other}.npy").is_file() and not (tmp_path / "o" / f"{failed}.npy").exists()
    else:
        assert "1 video(s) done" in r.stderr and (tmp_path / "o.csv").is_file()


class _NaNClip(_OutOfMemoryOnce):
    """A loaded CLIP whose image encoder gives NaN (fp16 overflow, a broken GPU kernel)."""

    def encode_images(self, images, batch_size=64):
        return self.clip.encode_images(images, batch_size=batch_size) * float("nan")


def test_nan_features_are_not_written(tmp_path, videos, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.features.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: _NaNClip(real(*a, **kw), None))
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--output", str(tmp_path / "o"),
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 1 and len(error_lines(r)) == 1, r.output
    assert "CLIP gave NaN or infinite features for 1 of 1 frames" in error_lines(r)[0]
    assert not (tmp_path / "o").exists()


class OutOfMemoryClip:
    """A loaded CLIP whose image encoder runs out of CUDA memory, as a too large --batch-size does on a GPU."""

    def __init__(self, clip):
        self.clip = clip

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_images(self, images, batch_size=64):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_in_extraction_is_one_line(videos, tmp_path, monkeypatch, tiny_clip_name,
                                                       tiny_clip_weights):
    import stale_cli.features.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: OutOfMemoryClip(real(*a, **kw)))
    paths = [str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"])]
    common = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress",
              "--batch-size", "64"]
    for argv in (["extract-features", *paths, "--out", str(tmp_path / "o")], ["detect", *paths, "-c", "a dog"]):
        r = CliRunner().invoke(app, [*argv, *common])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        (line,) = error_lines(r)
        assert "CUDA out of memory" in line and "smaller --batch-size (e.g. 32)" in line


# ---------------------------------------------------------------- a full disk (mocked; a real one where a tmpfs mounts)


def test_extract_and_detect_on_a_full_disk(videos, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.fileio as fileio

    out = tmp_path / "feats"
    fail_once(monkeypatch, np, "save")
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [e for e in error_lines(r) if "No space" in e]
    assert "cfr25.npy" in line
    assert sorted(p.name for p in out.iterdir()) == ["ntsc.json", "ntsc.npy"] and no_partial_files(out) == []
    monkeypatch.undo()

    fail_once(monkeypatch, fileio.os, "replace")  # the first output file cannot be put in place
    preds = tmp_path / "preds"
    write_pair(tmp_path / "in" / "other.npy", good_features(seed=1), sidecar(40))
    r = detect(out / "ntsc.npy", tmp_path / "in" / "other.npy", "-c", "a dog", "-o", preds,
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [e for e in error_lines(r) if "No space" in e]
    assert "ntsc.json" in line
    assert sorted(p.name for p in preds.iterdir() if not p.name.startswith(".")) == ["other.json"]  # not the journal


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 256 KiB tmpfs filled to the last byte (needs root and mount; skipped elsewhere)."""
    import shutil

    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a tmpfs needs root and mount(8); the mocked ENOSPC tests cover the same paths")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_really_full_disk(full_tmpfs, videos, tiny_clip_name, tiny_clip_weights):
    out = full_tmpfs / "feats"
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len([e for e in error_lines(r) if "No space left on device" in e]) == 2, r.stderr
    assert not out.exists() or list(out.iterdir()) == []  # nothing partial, no temporary file
