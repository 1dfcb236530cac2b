"""Issue 9, "no tracebacks, no silent nonsense", the parts that span several commands: a full disk, unbounded
training and evaluation options, train --out and CUDA out-of-memory. Each bad input gives one ``error:`` line and
the batch goes on. (Its other tests are in the files of the modules they test.)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.fileio import write_features

from feature_files import detect, error_lines, good_features, sidecar, write_pair  # tests/ is on sys.path


# ---------------------------------------------------------------- a full disk


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_once(monkeypatch, owner, name: str):
    """Make ``owner.name`` raise ENOSPC on its first call only (the disk fills up, then space is freed)."""
    real = getattr(owner, name)
    calls = []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            enospc()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)


def no_partial_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_write_features_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", enospc)
    with pytest.raises(InputError, match="No space left on device; free some space"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    monkeypatch.undo()
    fail_once(monkeypatch, Path, "write_text")  # the array is written, then its sidecar fails
    with pytest.raises(InputError, match="No space left"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    assert list(tmp_path.iterdir()) == []  # no array without its sidecar, no temporary file


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


@pytest.mark.parametrize("workers", ["1", "2"])  # the decode thread, or decoding processes
def test_lock_files_on_a_full_disk(videos, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights, workers):
    """A per-video lock file that cannot be written fails that video with one line (it once hung the batch: the
    decode thread died taking the lock)."""
    import stale_cli.locks as locks

    monkeypatch.setattr(locks.os, "pwrite", enospc)
    out = tmp_path / "feats"
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress", "--workers", workers])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [e for e in error_lines(r) if "No space left on device" in e]
    assert len(lines) == 2 and all(".lock" in e for e in lines), r.stderr
    assert not out.exists()  # made for the lock files only, and left empty: removed again


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


# ---------------------------------------------------------------- numeric options


def test_training_and_evaluation_options_are_bounded(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10,
                                                  "annotations": [{"segment": [1, 2], "label": "A"}]}}}))
    for args in (["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--seed", "-1"], ["--epochs", "0"],
                 ["--val-fraction", "nan"], ["--lr-prompt", "2"], ["--lr-text", "nan"], ["--window-jitter", "1.5"],
                 ["--dropout", "1"], ["--dropout", "nan"]):
        r = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--annotations", str(ann), "--out",
                                     str(tmp_path / "m.pt"), *args])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, (args, r.output)
    r = CliRunner().invoke(app, ["zero-shot", "--dataset", "thumos14", "--features", str(tmp_path), "-a", str(ann),
                                 "--work-dir", str(tmp_path / "w"), "--num-snippets", "1"])
    assert r.exit_code == 1 and "--num-snippets" in r.stderr
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9, "segment": [1, 2]}]}}))
    for tiou, why in (("0.5:inf:0.05", "start:stop:step"), ("0.5:0.95:0.000005", "90001 thresholds"),
                      ("0.5:0.95:1e-320", "thresholds"), ("nan", "(0, 1]")):
        r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann), "--tiou", tiou])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and why in r.stderr, (tiou, r.output)
    deep = tmp_path / "deep.json"
    deep.write_text('{"database": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in ([str(preds), "-a", str(deep)], [str(deep), "-a", str(ann)]):
        r = CliRunner().invoke(app, ["evaluate", *args])
        assert r.exit_code == 1 and "nested too deeply" in r.stderr and "Traceback" not in r.output


# ---------------------------------------------------------------- train --out, CUDA out of memory


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
    import stale_cli.clip_backbone as backbone

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


