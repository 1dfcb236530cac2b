"""Issue 9, "resume and concurrency": resume by source identity, name clashes across runs, per-output locks with
real concurrent processes, sidecar/array pairs, and a ``weights/`` folder holding someone else's ``.pt``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import DataError
from stale_cli.fileio import read_features
from stale_cli.locks import OutputLock, lock_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def extract(tiny_clip_name, tiny_clip_weights):
    def invoke(*args):
        r = CliRunner().invoke(app, ["extract-features", *map(str, args), "--fps", "2", "--clip-model", tiny_clip_name,
                                     "--clip-weights", str(tiny_clip_weights), "--no-progress"])
        assert "Traceback" not in r.output, r.output
        return r

    return invoke


def test_a_symlinked_video_counts_as_finished(extract, videos, tmp_path):
    link = tmp_path / "link.mp4"
    os.symlink(videos["single"]["path"], link)
    assert extract(link, "--out", tmp_path / "f").exit_code == 0
    r = extract(link, "--out", tmp_path / "f")
    assert r.exit_code == 0 and "done 0, skipped 1" in r.output


def test_same_name_from_another_folder_is_not_taken_for_finished(extract, videos, tmp_path):
    a, b = tmp_path / "dA" / "clip.mp4", tmp_path / "dB" / "clip.mp4"
    for d, src in ((a, videos["single"]["path"]), (b, videos["late"]["path"])):
        d.parent.mkdir()
        shutil.copy(src, d)
    out = tmp_path / "f"
    assert extract(a, "--out", out).exit_code == 0
    r = extract(b, "--out", out)
    assert r.exit_code == 0 and "done 1, skipped 0" in r.output and "holds another video's features" in r.output
    renamed = [p for p in out.glob("clip-*.npy")]
    assert len(renamed) == 1
    assert read_features(renamed[0])[1].source == str(b.resolve())
    assert read_features(out / "clip.npy")[1].source == str(a.resolve())  # dA's features untouched
    assert "skipped 1" in extract(b, "--out", out).output and "skipped 1" in extract(a, "--out", out).output


def test_a_modified_source_is_extracted_again(extract, videos, tmp_path):
    video = tmp_path / "v.mp4"
    shutil.copy(videos["single"]["path"], video)
    assert extract(video, "--out", tmp_path / "f").exit_code == 0
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r = extract(video, "--out", tmp_path / "f")
    assert r.exit_code == 0 and "done 1" in r.output and "changed since" in r.output


HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from stale_cli.locks import OutputLock
lock = OutputLock({target!r}).acquire()
print("locked" if lock else "busy", flush=True)
time.sleep(60)
"""


def hold_lock(target: Path) -> subprocess.Popen:
    """Another process that takes ``target``'s lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


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
from stale_cli.extract import extract_many
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
    from stale_cli.fileio import write_features

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


def test_detect_names_a_clash_across_runs_like_one_within_a_run(tmp_path, tiny_clip_name, tiny_clip_weights):
    from stale_cli.fileio import write_features

    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(20)], "duration": 5.0, "source": "x",
            "clip_model": tiny_clip_name, "clip_weights": "random", "num_frames": 20}
    for i, d in enumerate(("dA", "dB")):
        write_features(tmp_path / d / "clip.npy", np.random.default_rng(i).normal(size=(20, 32)), meta)
    out = tmp_path / "preds"

    def run(d):
        return CliRunner().invoke(app, ["detect", str(tmp_path / d / "clip.npy"), "-c", "a,b", "-o", f"{out}/",
                                        "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                        "--no-progress"])

    assert run("dA").exit_code == 0
    first = (out / "clip.json").read_text()
    r = run("dB")
    assert r.exit_code == 0 and "holds another video's detections" in " ".join(r.output.split())
    assert (out / "clip.json").read_text() == first  # dA's output untouched
    (renamed,) = out.glob("clip-*.json")
    assert list(json.loads(renamed.read_text())["results"]) == [renamed.stem]
    assert "1 resumed" in run("dB").output and "1 resumed" in run("dA").output


def test_read_features_rejects_a_sidecar_of_another_array(tmp_path):
    from stale_cli.fileio import write_features

    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(8)], "duration": 2.0, "source": "x", "clip_model": "m",
            "clip_weights": "w", "num_frames": 8, "num_rows": 8, "embed_dim": 16}
    write_features(tmp_path / "a.npy", np.zeros((8, 16)), meta)
    write_features(tmp_path / "b.npy", np.zeros((8, 32)), meta)  # another run's array beside this sidecar
    assert read_features(tmp_path / "a.npy")[0].shape == (8, 16)
    with pytest.raises(DataError, match="does not describe b.npy .*embed_dim 16"):
        read_features(tmp_path / "b.npy")
    np.save(tmp_path / "a.npy", np.zeros((6, 16), np.float16))
    with pytest.raises(DataError, match="num_rows 8"):
        read_features(tmp_path / "a.npy")


def test_weights_folder_counts_only_stale_checkpoints(tmp_path, caplog):
    import torch

    from stale_cli.detect import CLIP_MODE, STALE_MODE, choose_mode

    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)},
               tmp_path / "resnet50.pth")  # a plain state dict, as torchvision saves
    (tmp_path / "notes.pt").write_bytes(b"not even a zip")
    with caplog.at_level(logging.DEBUG, logger="stale_cli"):
        assert choose_mode(None, None, tmp_path) == (CLIP_MODE, None)
    ignored = [r.getMessage() for r in caplog.records if "not a stale checkpoint; ignored" in r.getMessage()]
    assert len(ignored) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records if "ignored" in r.getMessage())
    torch.save({"format": "stale-checkpoint", "version": 1}, tmp_path / "th75_0.pt")
    assert choose_mode(None, None, tmp_path) == (STALE_MODE, tmp_path / "th75_0.pt")
