"""Writing detections: ActivityNet results JSON, CSV, SRT, a rich table on stdout, and a score plot.

Formats (docs/formats.md):

- **JSON**: the ActivityNet results schema ``{"version", "results": {video_id: [{"label", "score",
  "segment": [start_s, end_s]}]}, "external_data": {...}}``; ``external_data`` holds the run metadata
  (mode, checkpoint, classes, fps, CLIP model and weights, stale version), so ``stale evaluate`` reads it as is.
- **CSV**: header ``video,label,start,end,score``, one row per segment, seconds with millisecond precision.
- **SRT**: one subtitle per segment, text ``label (score)``; overlapping subtitles are allowed by the format.
  An SRT file holds one video.

``--output`` is a file, a directory or ``-`` (stdout). A directory gets one file per input video,
``<video_id>.<ext>``, written atomically as each video finishes; a file gets every video, written once, atomically,
when the batch ends (or is interrupted): what a batch finished meanwhile is kept by :mod:`stale_cli.resume`'s
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from stale_cli.errors import InputError, StdoutError
from stale_cli.fileio import atomic_path, check_file_writable, check_writable, write_text_atomic
from stale_cli.text import terminal_text

log = logging.getLogger(__name__)

FORMATS = ("json", "csv", "srt")
RESULTS_VERSION = "VERSION 1.3"  # the version string of ActivityNet results files


@dataclass(frozen=True)
class Segment:
    label: str
    start: float  # seconds
    end: float  # seconds
    score: float  # in [0, 1]
    class_index: int  # row of ``label`` in its VideoDetections.classes (and column of its scores)


@dataclass
class VideoDetections:
    """Everything detection knows about one input video.

    ``classes`` are the K names asked for: each segment's ``class_index`` is its row there, and ``scores`` (T, K)
    has one column per class: the per-snippet class probabilities (background column dropped) at ``times`` (T,),
    the seconds at the centre of each snippet, used by the plot and the HTML report (``stale_cli.report``).
    """

    video_id: str
    source: str
    duration: float  # seconds
    segments: list[Segment]
    times: Optional[np.ndarray] = None  # (T,) seconds
    scores: Optional[np.ndarray] = None  # (T, K)
    extra: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        self.classes = tuple(self.classes)
        for s in self.segments:
            if not (0 <= s.class_index < len(self.classes) and self.classes[s.class_index] == s.label):
                raise ValueError(f"segment {s.label!r} (class {s.class_index}) is not one of {self.classes}")
        if self.scores is not None and np.shape(self.scores)[-1] != len(self.classes):
            raise ValueError(f"scores of shape {np.shape(self.scores)} for {len(self.classes)} classes")


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
    """Writes each video's detections: ``output=None`` prints a table per video on ``console``; a directory gets
    ``<video_id>.<fmt>`` as each video finishes; a file (or ``-``, stdout) gets all videos, in input order, at
    :meth:`close`. ``order``: the batch's video ids, for that order.
    """

    def __init__(self, output: Optional[str | os.PathLike], fmt: str, meta: dict, console=None, num_inputs: int = 1,
                 order: Optional[list[str]] = None):
        self.fmt = fmt
        self.meta = meta
        self.console = console
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
        elif self.file is None and not self.to_stdout and self.console is not None:
            print_table(video, self.console)

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


@dataclass
class TextTable:
    """A table of plain strings that is printed whole: a rich table on a terminal wide enough for every cell, else
    plain aligned text (a batch log, a pipe, a narrow terminal). Numbers are never cut to ``0.8…``.

    ``right``: per column, True to right-align (numbers). ``rules``: row indices a horizontal rule goes before.
    ``bold``: row indices printed in bold on a terminal. All text is printed as is (no markup).
    """

    title: str
    headers: list[str]
    right: list[bool]
    rows: list[list[str]] = field(default_factory=list)
    rules: set = field(default_factory=set)
    bold: set = field(default_factory=set)

    def widths(self) -> list[int]:
        return [max(len(r[j]) for r in [self.headers, *self.rows]) for j in range(len(self.headers))]

    def plain(self) -> str:
        widths = self.widths()

        def line(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, self.right)).rstrip()

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                out.append("  ".join("-" * w for w in widths))
            out.append(line(row))
        return "\n".join(out)

    def print(self, console) -> None:
        # Escaped first (as the console would print them), so that the columns are as wide as what is printed.
        self.title, self.headers = terminal_text(self.title), [terminal_text(h) for h in self.headers]
        self.rows = [[terminal_text(c) for c in row] for row in self.rows]
        # A rich table with its default padding and borders takes 3 columns per column plus 1.
        if not console.is_terminal or sum(self.widths()) + 3 * len(self.headers) + 1 > console.width:
            console.print(self.plain(), markup=False, highlight=False, soft_wrap=True)
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.title), title_justify="left")
        for header, right in zip(self.headers, self.right):
            table.add_column(Text(header), justify="right" if right else "left", no_wrap=True)
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                table.add_section()
            table.add_row(*(Text(c, style="bold" if i in self.bold else "") for c in row))
        console.print(table)


def print_table(video: VideoDetections, console) -> None:
    """A readable table of one video's segments, sorted by start time."""
    table = TextTable(f"{video.video_id}  ({clock(video.duration)}, {len(video.segments)} segments)",
                      ["start", "end", "label", "score"], [True, True, False, True])
    for s in sorted(video.segments, key=lambda s: (s.start, -s.score)):
        table.rows.append([clock(s.start), clock(s.end), s.label, f"{s.score:.3f}"])
    table.print(console)


def clock(seconds: float) -> str:
    """Seconds -> ``h:mm:ss.s``, the one time format for people: the terminal table, the HTML report (whose
    script mirrors this function) and its index page. Tenths are rounded half up; SRT has its own format."""
    if not math.isfinite(seconds):
        return "-:--:--.-"
    tenths = math.floor(max(seconds, 0.0) * 10 + 0.5)
    h, tenths = divmod(tenths, 36_000)
    m, tenths = divmod(tenths, 600)
    return f"{h}:{m:02d}:{tenths // 10:02d}.{tenths % 10}"


def require_matplotlib() -> None:
    """Fail early, before any work, when ``--plot`` is asked for without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'stale-cli[plot]' (or pip install matplotlib)") from None


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps")  # matplotlib's


def check_plot_format(plot: str | os.PathLike) -> None:
    """A ``--plot`` suffix matplotlib cannot write -> InputError (before any work, not a traceback after it)."""
    suffix = Path(plot).suffix or ".png"
    if suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {plot}: matplotlib cannot write {suffix!r} images; use one of "
                         f"{', '.join(PLOT_SUFFIXES)}")


def plot_paths(plot: str | os.PathLike, video_ids: list[str]) -> dict[str, Path]:
    """One video -> ``plot`` itself; several -> ``<stem>_<video_id><suffix>`` beside it."""
    plot = Path(plot)
    suffix = plot.suffix or ".png"
    if len(video_ids) == 1:
        return {video_ids[0]: plot if plot.suffix else plot.with_suffix(suffix)}
    return {vid: plot.with_name(f"{plot.stem}_{vid}{suffix}") for vid in video_ids}


def plot_detections(video: VideoDetections, path: str | os.PathLike) -> None:
    """Per-class score curves over time (top panel) and the detected segments as bars (bottom panel), one row
    and one colour per class of the video."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    classes = video.classes
    fig, (ax_s, ax_d) = plt.subplots(
        2, 1, figsize=(12, 2.5 + 0.35 * len(classes)), sharex=True, gridspec_kw={"height_ratios": [3, 1 + 0.2 * len(classes)]}
    )
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    if video.times is not None and video.scores is not None:
        for k, name in enumerate(classes):
            ax_s.plot(video.times, video.scores[:, k], color=colours(k % colours.N), lw=1.2, label=name)
    ax_s.set_ylabel("class probability")
    ax_s.set_ylim(0, 1.02)
    ax_s.legend(loc="upper right", fontsize="small", ncol=min(len(classes), 4))
    ax_s.set_title(f"{video.video_id}: {video.extra.get('mode', '')} detections")
    for s in video.segments:
        k = s.class_index
        ax_d.barh(k, s.end - s.start, left=s.start, height=0.8, color=colours(k % colours.N), alpha=0.3 + 0.7 * s.score)
    ax_d.set_yticks(range(len(classes)), classes, fontsize="small")
    ax_d.set_ylim(-0.6, len(classes) - 0.4)
    ax_d.invert_yaxis()
    ax_d.set_xlim(0, max(video.duration, 1e-3))
    ax_d.set_xlabel("seconds")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    finally:
        plt.close(fig)
