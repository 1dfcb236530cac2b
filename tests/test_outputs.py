"""Output formats against their schema: ActivityNet results JSON, CSV, SRT; writer modes; plot."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from stale_cli.cli.table import print_table
from stale_cli.detection.detections import Segment, VideoDetections
from stale_cli.detection.outputs import (ResultWriter, resolve_format, results_csv, results_json, results_srt,
                                        srt_timestamp)
from stale_cli.errors import InputError
from stale_cli.report.plot import plot_detections, plot_paths

META = {"mode": "clip", "checkpoint": None, "classes": ["a", "b"], "fps": 4.0, "stale_version": "0.1.0"}


def video(vid="v1", n=2):
    segs = [Segment("a", 1.25, 3.5, 0.9, 0), Segment("b", 0.0, 61.0, 0.25, 1)][:n]
    return VideoDetections(vid, f"{vid}.mp4", 70.0, segs, times=np.arange(10) + 0.5, scores=np.full((10, 2), 0.3),
                           classes=("a", "b"))


def test_results_json_schema():
    obj = results_json([video("v1"), video("v2", 1)], META)
    assert set(obj) == {"version", "results", "external_data"}
    assert obj["external_data"]["mode"] == "clip" and obj["external_data"]["classes"] == ["a", "b"]
    assert list(obj["results"]) == ["v1", "v2"]
    for entries in obj["results"].values():
        for e in entries:
            assert set(e) == {"label", "score", "segment"}
            assert isinstance(e["label"], str) and 0 <= e["score"] <= 1
            assert len(e["segment"]) == 2 and e["segment"][0] <= e["segment"][1]
    assert obj["results"]["v1"][0] == {"label": "a", "score": 0.9, "segment": [1.25, 3.5]}


def test_csv_header_and_rows():
    rows = list(csv.reader(io.StringIO(results_csv([video("v1"), video("v,2", 1)]))))
    assert rows[0] == ["video", "label", "start", "end", "score"]
    assert rows[1] == ["v1", "a", "1.250", "3.500", "0.900000"]
    assert rows[3][0] == "v,2"  # quoted, not split
    assert len(rows) == 4


def test_srt_blocks():
    text = results_srt(video())
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 2
    first = blocks[0].splitlines()  # sorted by start: "b" from 0 s comes first
    assert first == ["1", "00:00:00,000 --> 00:01:01,000", "b (0.25)"]
    assert re.fullmatch(r"2\n00:00:01,250 --> 00:00:03,500\na \(0\.90\)", blocks[1])
    assert srt_timestamp(3725.0004) == "01:02:05,000"


def test_resolve_format():
    assert resolve_format("x.csv", None) == "csv"
    assert resolve_format("x.SRT", None) == "srt"
    assert resolve_format("x.txt", None) == "json"
    assert resolve_format(None, None) == "json"
    assert resolve_format("x.csv", "json") == "json"
    with pytest.raises(InputError, match="--format"):
        resolve_format(None, "xml")


def test_writer_directory_file_and_stdout(tmp_path):
    w = ResultWriter(tmp_path / "out", "csv", META)
    w.add(video("v1"))
    assert (tmp_path / "out" / "v1.csv").read_text().startswith("video,label,start,end,score\n")
    w.add(video("v2"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1.csv", "v2.csv"]  # no temp files left
    with pytest.raises(InputError, match="already used"):
        w.add(video("v1"))

    f = ResultWriter(tmp_path / "all.json", "json", META, order=["v1", "v2"])
    f.add(video("v2"))
    f.add(video("v1"))
    assert not (tmp_path / "all.json").exists()  # written once, at the end (the journal keeps finished videos)
    f.close()
    assert list(json.loads((tmp_path / "all.json").read_text())["results"]) == ["v1", "v2"]  # input order

    with pytest.raises(InputError, match="SRT file holds one video"):
        ResultWriter(tmp_path / "x.srt", "srt", META, num_inputs=2)

    from rich.console import Console

    console = Console(file=io.StringIO(), width=100)
    ResultWriter(None, "json", META, show=lambda v: print_table(v, console)).add(video("v1"))
    out = console.file.getvalue()
    assert "v1" in out and "0:00:01.3" in out and "0.900" in out


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot_paths(tmp_path / "p.png", ["x"]) == {"x": tmp_path / "p.png"}
    assert plot_paths(tmp_path / "p.png", ["x", "y"])["y"] == tmp_path / "p_y.png"
    plot_detections(video(), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segments_name_a_class_of_their_video():
    """A segment is drawn in the row of its class index; one whose label is not that class is refused (it used
    to be drawn in row 0), as are score columns that are not the video's classes."""
    with pytest.raises(ValueError, match="'c' .*is not one of"):
        VideoDetections("v", "v.mp4", 10.0, [Segment("c", 1.0, 2.0, 0.5, 0)], classes=("a", "b"))
    with pytest.raises(ValueError, match="is not one of"):
        VideoDetections("v", "v.mp4", 10.0, [Segment("a", 1.0, 2.0, 0.5, 2)], classes=("a", "b"))
    with pytest.raises(ValueError, match="for 2 classes"):
        VideoDetections("v", "v.mp4", 10.0, [], scores=np.zeros((4, 3)), classes=("a", "b"))


def test_journal_round_trip_keeps_class_indices(tmp_path):
    """A video resumed from the journal gets the run's classes and its segments their rows; a record naming a
    label the run does not have is detected again, not drawn in some row."""
    from stale_cli.detection.resume import DetectJournal

    src = tmp_path / "v1.mp4"
    src.write_bytes(b"x")
    journal = DetectJournal(tmp_path / "j", {"mode": "clip", "classes": ["a", "b"]}, target=lambda v: tmp_path / v)
    journal.append(video(), src)
    back = journal.finished("v1", src)
    assert back.classes == ("a", "b") and [s.class_index for s in back.segments] == [0, 1]
    assert [s.label for s in back.segments] == ["a", "b"] and back.extra["resumed"]
    other = DetectJournal(tmp_path / "j", {"mode": "clip", "classes": ["a"]}, target=lambda v: tmp_path / v)
    with open(tmp_path / "j", "a") as f:  # the same run but for its classes: records of "b" are not its own
        rec = json.loads((tmp_path / "j").read_text().splitlines()[0])
        f.write(json.dumps(dict(rec, run=other.run)) + "\n")
    assert other.finished("v1", src) is None
