"""Writing detections: ActivityNet results JSON, CSV, SRT (the types are in :mod:`stale_cli.detection.detections`, the
terminal table in :mod:`stale_cli.cli.table`, the score plot in :mod:`stale_cli.report.plot`).

Formats (docs/formats.md):

- **JSON**: the ActivityNet results schema ``{"version", "results": {video_id: [{"label", "score",
  "segment": [start_s, end_s]}]}, "external_data": {...}}``; ``external_data`` holds the run metadata
  (mode, checkpoint, classes, fps, CLIP model and weights, stale version), so ``stale evaluate`` reads it as is.
- **CSV**: header ``video,label,start,end,score``, one row per segment, seconds with millisecond precision.
- **SRT**: one subtitle per segment, text ``label (score)``; overlapping subtitles are allowed by the format.
  An SRT file holds one video.

``--output`` is a file, a directory or ``-`` (stdout). A directory gets one file per input video,
``<video_id>.<ext>``, written atomically as each video finishes; a file gets every video, written once, atomically,
when the batch ends (or is interrupted): what a batch finished meanwhile is kept by :mod:`stale_cli.detection.resume`'s
journal, not by rewriting the file after every video. ``-`` prints the file's content on stdout at the end. With
no ``--output`` every video's segments are printed as a table on stdout. No output may be one of the inputs, a
sidecar of one, a cached feature file or another output (:mod:`stale_cli.guard`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from stale_cli.detection.detections import Segment, VideoDetections
from stale_cli.errors import InputError, StdoutError
from stale_cli.fileio import check_file_writable, check_writable, write_text_atomic
from stale_cli.text import terminal_text

log = logging.getLogger(__name__)

FORMATS = ("json", "csv", "srt")
RESULTS_VERSION = "VERSION 1.3"  # the version string of ActivityNet results files


def resolve_format(output: Optional[str | os.PathLike], fmt: Optional[str]) -> str:
    """``--format`` if given, else the extension of ``--output`` when it is one of ours, else json."""
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    if output is not None:
        ext = Path(output).suffix.lower().lstrip(".")
        if ext in FORMATS:
            return ext
    return "json"


STDOUT = "-"


def write_stdout(text: str, file=None) -> None:
    """Write ``text`` to ``file`` (default: sys.stdout) and flush it; a failure (a full disk behind ``> out.json``,
    ``> /dev/full``) is one StdoutError line. A reader that went away (BrokenPipeError) is left to the caller."""
    from stale_cli.text import unicode_name

    file = file if file is not None else sys.stdout
    try:
        interactive = file.isatty()
    except (AttributeError, ValueError):
        interactive = False
    try:
        file.write(terminal_text(text) if interactive else unicode_name(text))  # a terminal gets no raw ESC
        file.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise StdoutError(f"cannot write to stdout: {e.strerror or e}; free some space or redirect it elsewhere") from e


def output_is_directory(output: str | os.PathLike) -> bool:
    """An existing directory, a path ending in a separator, or a path without extension is a directory."""
    text = str(output)
    path = Path(output)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return True
    if path.exists():
        return False
    return path.suffix == ""


def segment_dict(seg: Segment) -> dict:
    return {"label": seg.label, "score": round(float(seg.score), 6), "segment": [round(seg.start, 3), round(seg.end, 3)]}


def results_json(videos: list[VideoDetections], meta: dict) -> dict:
    """The ActivityNet results object for ``videos``; ``meta`` goes into ``external_data``."""
    return {
        "version": RESULTS_VERSION,
        "results": {v.video_id: [segment_dict(s) for s in v.segments] for v in videos},
        "external_data": {"used": True, "details": "CLIP features (stale)", **meta},
    }


def results_csv(videos: list[VideoDetections]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["video", "label", "start", "end", "score"])
    for v in videos:
        for s in v.segments:
            writer.writerow([v.video_id, s.label, f"{s.start:.3f}", f"{s.end:.3f}", f"{s.score:.6f}"])
    return buf.getvalue()


def srt_timestamp(seconds: float) -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (SRT)."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def results_srt(video: VideoDetections) -> str:
    """One subtitle per segment, in order of start time, numbered from 1."""
    blocks = []
    for i, s in enumerate(sorted(video.segments, key=lambda s: (s.start, -s.score)), start=1):
        blocks.append(f"{i}\n{srt_timestamp(s.start)} --> {srt_timestamp(s.end)}\n{s.label} ({s.score:.2f})\n")
    return "\n".join(blocks)


def render(videos: list[VideoDetections], fmt: str, meta: dict) -> str:
    if fmt == "json":
        return json.dumps(results_json(videos, meta), indent=2) + "\n"
    if fmt == "csv":
        return results_csv(videos)
    assert fmt == "srt" and len(videos) <= 1, "an SRT file holds one video"
    return results_srt(videos[0]) if videos else ""


class ResultWriter:
    """Writes each video's detections: ``output=None`` hands each video to ``show`` (the CLI prints a table of it:
    :func:`stale_cli.cli.table.print_table`); a directory gets ``<video_id>.<fmt>`` as each video finishes; a file
    (or ``-``, stdout, ``console``'s file when given) gets all videos, in input order, at :meth:`close`. ``order``:
    the batch's video ids, for that order.
    """

    def __init__(self, output: Optional[str | os.PathLike], fmt: str, meta: dict, console=None, num_inputs: int = 1,
                 order: Optional[list[str]] = None, show: Optional[Callable[[VideoDetections], None]] = None):
        self.fmt = fmt
        self.meta = meta
        self.console = console  # its file is where ``-`` writes
        self.show = show
        self.order = {vid: i for i, vid in enumerate(order or [])}
        self.videos: list[VideoDetections] = []
        self.ids: set[str] = set()
        self.written: list[Path] = []
        self.directory: Optional[Path] = None
        self.file: Optional[Path] = None
        self.to_stdout = output is not None and str(output) == STDOUT
        if fmt == "srt" and num_inputs > 1 and output is not None and (self.to_stdout or not output_is_directory(output)):
            raise InputError("an SRT file holds one video's subtitles; give --output a directory for several videos")
        if output is None or self.to_stdout:
            return
        # A missing folder is made by the first write (shell loops write out/<name>.json), not here: a run that
        # fails on its inputs leaves nothing behind.
        if output_is_directory(output):
            self.directory = Path(output)
            check_writable(self.directory, f"--output {output}")
        else:
            self.file = Path(output)
            check_file_writable(self.file, f"--output {output}")

    def path_of(self, video_id: str) -> Optional[Path]:
        """Where a video's detections go: its own file (directory output), the one file, or None (stdout)."""
        if self.directory is not None:
            return self.directory / f"{video_id}.{self.fmt}"
        return self.file

    def add(self, video: VideoDetections) -> None:
        if video.video_id in self.ids:
            raise InputError(
                f"{video.source}: video id {video.video_id!r} was already used by another input; "
                "rename one of them (outputs are keyed by file stem)"
            )
        self.videos.append(video)
        self.ids.add(video.video_id)
        if self.directory is not None:
            path = self.path_of(video.video_id)
            if not (video.extra.get("resumed") and path.is_file()):
                self._write(path, [video])
        elif self.file is None and not self.to_stdout and self.show is not None:
            self.show(video)

    def close(self) -> None:
        """Write the file (or stdout) with every video added, in input order. Call it once, also on interrupt."""
        if self.file is None and not self.to_stdout:
            return
        videos = sorted(self.videos, key=lambda v: self.order.get(v.video_id, len(self.order)))
        if self.to_stdout:
            write_stdout(render(videos, self.fmt, self.meta), self.console.file if self.console is not None else None)
        elif videos:
            self._write(self.file, videos)

    def _write(self, path: Path, videos: list[VideoDetections]) -> None:
        write_text_atomic(path, render(videos, self.fmt, self.meta))
        if path not in self.written:
            self.written.append(path)
        log.debug("wrote %s", path)


def clock(seconds: float) -> str:
    """Seconds -> ``h:mm:ss.s``, the one time format for people: the terminal table, the HTML report (whose
    script mirrors this function) and its index page. Tenths are rounded half up; SRT has its own format."""
    if not math.isfinite(seconds):
        return "-:--:--.-"
    tenths = math.floor(max(seconds, 0.0) * 10 + 0.5)
    h, tenths = divmod(tenths, 36_000)
    m, tenths = divmod(tenths, 600)
    return f"{h}:{m:02d}:{tenths // 10:02d}.{tenths % 10}"
