"""Issue 9, "outputs must never destroy inputs": clobbering refused, ``-o -``, file modes, fsync and stale
temporaries, ``detect -o FILE`` written once (journal, resume, interrupt) and checked writable before any work."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.fileio import write_features, write_text_atomic

ANNOTATIONS = Path(__file__).parent / "fixtures" / "thumos14_mini.json"


@pytest.fixture
def feats(tmp_path, tiny_clip_name, tiny_clip_weights):
    """Three feature files (with sidecars) shaped like CLIP's for the tiny model."""
    from stale_cli.clip_backbone import load_clip
    from stale_cli.clipmode import class_text_features

    from test_detect import CLASSES, constructed_features

    text = class_text_features(load_clip(tiny_clip_name, str(tiny_clip_weights)), CLASSES)
    d = tmp_path / "feats"
    for i in range(3):
        f, meta = constructed_features(text, seed=i)
        write_features(d / f"v{i}.npy", f, meta)
    return d


def detect(args, tiny_clip_name, tiny_clip_weights):
    base = ["--classes", "high jump,pole vault", "--clip-model", tiny_clip_name, "--clip-weights",
            str(tiny_clip_weights), "--no-progress"]
    r = CliRunner().invoke(app, ["detect", *map(str, args), *base])
    assert "Traceback" not in r.output
    return r


def test_detect_refuses_to_write_over_its_inputs(feats, tmp_path, videos, tiny_clip_name, tiny_clip_weights):
    sidecar = (feats / "v0.json").read_text()
    r = detect([feats, "-o", feats], tiny_clip_name, tiny_clip_weights)  # json into the features folder
    assert r.exit_code == 1 and "is the sidecar of the input v0.npy" in r.output
    assert (feats / "v0.json").read_text() == sidecar
    assert detect([feats, "-o", feats, "--format", "csv"], tiny_clip_name, tiny_clip_weights).exit_code == 0

    video = tmp_path / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    before = video.read_bytes()
    r = detect([video, "-o", video], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "is the input" in r.output and video.read_bytes() == before

    cache = tmp_path / "cache"
    r = detect([video, "--cache-features", cache, "-o", f"{cache}/"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "cached feature sidecar" in r.output and not list(cache.glob("*"))

    r = detect([feats / "v1.npy", "-o", tmp_path / "p.json", "--plot", feats / "v1.json"], tiny_clip_name,
               tiny_clip_weights)
    assert r.exit_code == 1 and "--plot" in r.output and "sidecar" in r.output


def test_evaluate_refuses_to_write_over_its_inputs(tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {}}))
    for target in (preds, ANNOTATIONS):
        before = target.read_text()
        r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ANNOTATIONS), "-o", str(target)])
        assert r.exit_code == 1 and "writing it would destroy it" in r.output and "Traceback" not in r.output
        assert target.read_text() == before


def test_dash_means_stdout(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    monkeypatch.chdir(tmp_path)
    r = detect([feats / "v0.npy", feats / "v1.npy", "-o", "-"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.stdout)["results"]) == ["v0", "v1"]  # stdout holds exactly the JSON
    assert not Path("-").exists()
    r = detect([feats / "v0.npy", "-o", "-", "--format", "csv"], tiny_clip_name, tiny_clip_weights)
    assert r.stdout.startswith("video,label,start,end,score\n")

    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"video_test_0000004": []}}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ANNOTATIONS), "-o", "-"])
    assert r.exit_code == 0, r.output
    assert "average_mAP" in json.loads(r.stdout) and not Path("-").exists()


def test_extract_refuses_dash_as_out(tmp_path, videos):
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--out", "-"])
    assert r.exit_code == 1 and "give a directory" in r.output and not Path("-").exists()


def test_atomic_writes_take_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    (tmp_path / "kept.json").write_text("old")
    os.chmod(tmp_path / "kept.json", 0o604)
    write_text_atomic(tmp_path / "kept.json", "new")
    assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o604  # an existing file keeps its mode


def test_atomic_writes_fsync_before_rename_and_clean_stale_temporaries(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    stale = tmp_path / f".out.json.{dead.pid}@{host}.abc123.tmp"  # left by a killed run
    live = tmp_path / f".out.json.{os.getpid()}@{host}.def456.tmp"  # a write in progress (this process)
    other = tmp_path / f".other.json.{dead.pid}@{host}.x.tmp"  # another output's: not ours to touch
    remote = tmp_path / f".out.json.{dead.pid}@another-node.x1.tmp"  # a pid of another machine: cannot tell
    for p in (stale, live, other, remote):
        p.write_text("partial")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text_atomic(tmp_path / "out.json", "{}")
    assert events == ["fsync", "replace"]
    assert not stale.exists() and live.exists() and other.exists() and remote.exists()


def test_detect_output_file_is_written_once_and_resumes(feats, tmp_path, monkeypatch, tiny_clip_name,
                                                        tiny_clip_weights):
    import stale_cli.outputs as outputs
    from stale_cli.detect import Detector

    out = tmp_path / "preds.json"
    writes = []
    real = outputs.write_text_atomic
    monkeypatch.setattr(outputs, "write_text_atomic", lambda p, t: (writes.append(Path(p)), real(p, t))[1])
    r = detect([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert writes == [out]  # once for the whole batch, not once per video
    journal = tmp_path / ".preds.json.journal"
    assert len(journal.read_text().splitlines()) == 3
    first = json.loads(out.read_text())["results"]

    calls = []
    real_detect = Detector.detect
    monkeypatch.setattr(Detector, "detect", lambda self, *a, **k: (calls.append(a[0]), real_detect(self, *a, **k))[1])
    r = detect([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and calls == [] and "0 video(s) done, 3 resumed" in r.output
    assert json.loads(out.read_text())["results"] == first

    r = detect([feats, "-o", out, "--all", "--top-k", "2"], tiny_clip_name, tiny_clip_weights)  # other settings
    assert len(calls) == 3 and "3 video(s) done, 0 resumed" in r.output
    assert all(len(v) <= 2 for v in json.loads(out.read_text())["results"].values())


def test_detect_interrupted_keeps_finished_videos(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    from stale_cli.detect import Detector

    out = tmp_path / "preds.csv"
    real_detect = Detector.detect
    seen = []

    def flaky(self, path, *a, **k):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real_detect(self, path, *a, **k)

    monkeypatch.setattr(Detector, "detect", flaky)
    r = detect([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 130 and "rerun the same command to resume" in r.output
    assert {row.split(",")[0] for row in out.read_text().splitlines()[1:]} == {"v0", "v1"}
    monkeypatch.setattr(Detector, "detect", real_detect)
    with open(tmp_path / ".preds.csv.journal", "a") as f:
        f.write('{"video_id": "v2", "segm')  # a line cut by a kill mid-write
    r = detect([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "1 video(s) done, 2 resumed" in r.output
    assert {row.split(",")[0] for row in out.read_text().splitlines()[1:]} == {"v0", "v1", "v2"}


def test_directory_output_resumes_and_rewrites_a_deleted_file(feats, tmp_path, tiny_clip_name, tiny_clip_weights):
    out = tmp_path / "preds"
    assert detect([feats, "-o", f"{out}/"], tiny_clip_name, tiny_clip_weights).exit_code == 0
    (out / "v1.json").unlink()
    r = detect([feats, "-o", f"{out}/"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "3 resumed" in r.output and (out / "v1.json").is_file()


def test_detect_checks_the_output_before_any_work(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.detect as detect_module

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(detect_module.Detector, "__init__", never)
    (tmp_path / "file").write_text("")
    r = detect([feats, "-o", tmp_path / "file" / "preds.json"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "cannot write" in r.output
