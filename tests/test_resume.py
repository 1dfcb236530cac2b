"""Resuming a ``stale detect`` batch (stale_cli/detection/resume.py): the journal of finished videos, what a rerun takes
from it, and the output name of a video whose name another run's video already holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stale_cli.cli import app

from feature_files import detect_known  # tests/ is on sys.path (rootdir conftest)


def test_a_video_recorded_without_curves_is_redone_by_a_report_run_but_shown_when_another_run_did_it(tmp_path):
    from stale_cli.detection.detections import Segment, VideoDetections
    from stale_cli.detection.resume import DetectJournal

    source = tmp_path / "v.npy"
    source.write_bytes(b"x")
    video = VideoDetections("v", str(source), 6.0, [Segment("a", 1.0, 2.0, 0.5, 0)],
                            times=np.arange(24) / 4, scores=np.full((24, 1), 0.5), classes=("a",))
    plain = DetectJournal(tmp_path / ".j", {"classes": ["a"]}, target=lambda v: tmp_path / v)
    plain.append(video, source)  # a run without --html: no curves recorded
    report_run = DetectJournal(tmp_path / ".j", {"classes": ["a"]}, target=lambda v: tmp_path / v)
    report_run.curves = True
    assert report_run.finished("v", source) is None  # resuming it would draw no curves: detected again
    shown = report_run.finished("v", source, resuming=False)  # finished by another run: in the report as it is
    assert shown is not None and shown.scores is None and shown.segments == video.segments
    report_run.append(video, source)
    again = report_run.finished("v", source)
    assert again is not None and np.allclose(again.scores, 0.5, atol=1 / 255) and np.allclose(again.times, video.times)


# ---------------------------------------------------------------- detect -o FILE written once; a rerun resumes


def test_detect_output_file_is_written_once_and_resumes(feats, tmp_path, monkeypatch, tiny_clip_name,
                                                        tiny_clip_weights):
    import stale_cli.detection.outputs as outputs
    from stale_cli.detection.detect import Detector

    out = tmp_path / "preds.json"
    writes = []
    real = outputs.write_text_atomic
    monkeypatch.setattr(outputs, "write_text_atomic", lambda p, t: (writes.append(Path(p)), real(p, t))[1])
    r = detect_known([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert writes == [out]  # once for the whole batch, not once per video
    journal = tmp_path / ".preds.json.journal"
    assert len(journal.read_text().splitlines()) == 3
    first = json.loads(out.read_text())["results"]

    calls = []
    real_detect = Detector.detect
    monkeypatch.setattr(Detector, "detect", lambda self, *a, **k: (calls.append(a[0]), real_detect(self, *a, **k))[1])
    r = detect_known([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and calls == [] and "0 video(s) done, 3 resumed" in r.output
    assert json.loads(out.read_text())["results"] == first

    r = detect_known([feats, "-o", out, "--all", "--top-k", "2"], tiny_clip_name, tiny_clip_weights)  # other settings
    assert len(calls) == 3 and "3 video(s) done, 0 resumed" in r.output
    assert all(len(v) <= 2 for v in json.loads(out.read_text())["results"].values())


def test_detect_interrupted_keeps_finished_videos(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    from stale_cli.detection.detect import Detector

    out = tmp_path / "preds.csv"
    real_detect = Detector.detect
    seen = []

    def flaky(self, path, *a, **k):
        seen.append(path)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real_detect(self, path, *a, **k)

    monkeypatch.setattr(Detector, "detect", flaky)
    r = detect_known([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 130 and "rerun the same command to resume" in r.output
    assert {row.split(",")[0] for row in out.read_text().splitlines()[1:]} == {"v0", "v1"}
    monkeypatch.setattr(Detector, "detect", real_detect)
    with open(tmp_path / ".preds.csv.journal", "a") as f:
        f.write('{"video_id": "v2", "segm')  # a line cut by a kill mid-write
    r = detect_known([feats, "-o", out], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "1 video(s) done, 2 resumed" in r.output
    assert {row.split(",")[0] for row in out.read_text().splitlines()[1:]} == {"v0", "v1", "v2"}


def test_directory_output_resumes_and_rewrites_a_deleted_file(feats, tmp_path, tiny_clip_name, tiny_clip_weights):
    out = tmp_path / "preds"
    assert detect_known([feats, "-o", f"{out}/"], tiny_clip_name, tiny_clip_weights).exit_code == 0
    (out / "v1.json").unlink()
    r = detect_known([feats, "-o", f"{out}/"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0 and "3 resumed" in r.output and (out / "v1.json").is_file()


def test_detect_names_a_clash_across_runs_like_one_within_a_run(tmp_path, tiny_clip_name, tiny_clip_weights):
    from stale_cli.sidecar import write_features

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
