"""Per-output locks (stale_cli/locks.py): a lock held by another live process, a stale one taken over, concurrent
runs splitting the work, and a lock file that cannot be made."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.locks import OutputLock, lock_path
from stale_cli.sidecar import read_features

from faults import enospc  # tests/ is on sys.path (rootdir conftest)
from feature_files import error_lines
from lock_holder import REPO, hold_lock


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


def test_lock_held_by_a_live_process_then_stale_after_it_dies(extract, videos, tmp_path):
    out = tmp_path / "f"
    holder = hold_lock(out / "single.npy")
    try:
        lock = OutputLock(out / "single.npy")
        assert lock.acquire() is None and lock.holder == f"pid {holder.pid}"
        r = extract(videos["single"]["path"], videos["late"]["path"], "--out", out)
        assert r.exit_code == 0 and "done 1" in r.output and f"another run that is extracting them (pid {holder.pid})" in r.output
        assert not (out / "single.npy").exists() and (out / "late.npy").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out / "single.npy").read_text().startswith(f"{holder.pid} ")  # left behind: stale
    r = extract(videos["single"]["path"], "--out", out)
    assert r.exit_code == 0 and "done 1" in r.output
    assert f"taking over a stale lock (pid {holder.pid} is gone)" in " ".join(r.output.split())
    assert not lock_path(out / "single.npy").exists()  # released when done


RUN = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
from stale_cli.features.extract import extract_many
torch.set_num_threads(1)


class PixelClip:  # stands in for CLIP (the locks are under test, not the encoder): 8x8 RGB means as features
    name, weights, embed_dim, image_size = "pixels", "none", 192, 8
    activation, precision = "gelu", "fp32"  # what the sidecar records of a CLIP (issue 8)
    weights_sha256 = None  # and of its weights (issue 16): "none" is not a file

    def resize_frames(self, frames):  # uint8 (n, H, W, 3) -> (n, 8, 8, 3)
        x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(8, 8), mode="area")
        return x.permute(0, 2, 3, 1).to(torch.uint8)

    def encode_images(self, frames, batch_size=32):
        return frames.reshape(len(frames), -1).float() / 255


s = extract_many([{paths}], {out!r}, PixelClip(), fps=4.0, progress=False)
print(json.dumps({{"done": s.done, "skipped": s.skipped, "busy": len(s.busy), "failed": len(s.failed)}}))
"""


def test_two_concurrent_runs_split_the_work(videos, tmp_path):
    names = ["cfr25", "ntsc", "vfr", "late", "single"]
    script = RUN.format(repo=str(REPO), out=str(tmp_path / "f"),
                        paths=", ".join(repr(str(videos[n]["path"])) for n in names))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(r["failed"] == 0 and r["done"] + r["skipped"] + r["busy"] == len(names) for r in results), results
    assert sum(r["done"] for r in results) == len(names), results  # every video made exactly once
    for n in names:
        feats, meta = read_features(tmp_path / "f" / f"{n}.npy")  # each pair from one run
        assert meta.num_rows == feats.shape[0]
    assert not list((tmp_path / "f").glob(".*.lock"))


def _two_feature_files(folder: Path, clip_name: str) -> None:
    from stale_cli.sidecar import write_features

    for i in range(2):
        write_features(folder / f"v{i}.npy", np.random.default_rng(i).normal(size=(20, 32)),
                       {"fps": 4.0, "timestamps": [k / 4 for k in range(20)], "duration": 5.0, "source": "x",
                        "clip_model": clip_name, "clip_weights": "random", "num_frames": 20})


def test_detect_leaves_a_video_locked_by_another_run(tmp_path, tiny_clip_name, tiny_clip_weights):
    _two_feature_files(tmp_path / "feats", tiny_clip_name)
    out = tmp_path / "preds.json"
    holder = hold_lock(out.with_name("preds.json.v1"))
    try:
        r = CliRunner().invoke(app, ["detect", str(tmp_path / "feats"), "-c", "a,b", "-o", str(out), "--clip-model",
                                     tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress"])
        assert r.exit_code == 0 and f"left to another run that is detecting them (pid {holder.pid})" in r.output
        assert list(json.loads(out.read_text())["results"]) == ["v0"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_detect_goes_on_past_a_video_whose_lock_cannot_be_made(tmp_path, tiny_clip_name, tiny_clip_weights):
    _two_feature_files(tmp_path / "feats", tiny_clip_name)
    out = tmp_path / "preds.json"
    lock_path(out.with_name("preds.json.v0")).mkdir(parents=True)  # a directory where v0's lock file goes
    r = CliRunner().invoke(app, ["detect", str(tmp_path / "feats"), "-c", "a,b", "-o", str(out), "--clip-model",
                                 tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert list(json.loads(out.read_text())["results"]) == ["v1"]  # the batch went on
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert any("v0.npy" in e and "cannot write" in e for e in errors), r.stderr
