"""Resuming a ``stale detect`` batch (stale_cli/resume.py): the journal of finished videos, what a rerun takes from
it, and the output name of a video whose name another run's video already holds."""

from __future__ import annotations

import numpy as np


def test_a_video_recorded_without_curves_is_redone_by_a_report_run_but_shown_when_another_run_did_it(tmp_path):
    from stale_cli.detections import Segment, VideoDetections
    from stale_cli.resume import DetectJournal

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
