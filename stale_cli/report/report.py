"""The HTML report of ``stale detect --html``: the video, its detections on a clickable timeline, and a table.

One self-contained page (no network: the CSS and JavaScript of ``assets/`` are inlined) per report file.
``--html report.html`` puts every input of the batch on one page; ``--html DIR/`` writes ``DIR/<video_id>.html``
per input, and an ``index.html`` linking them. Each write is atomic; a page that grows with the batch is rewritten
as videos finish (at most every 10 s, and at the end), so an interrupted batch keeps a report of what it finished.

Per video the page has a ``<video>`` player whose ``src`` is the video's path *relative to the report* (the video is
not embedded: move them together), one lane per class with the class's probability curve over time behind its
segments (bars shaded by score), a playhead that follows the video, a segment table (sortable, virtualised) and a
score slider. Feature-file inputs get the timeline and table without a player.

Data goes to the page as JSON in ``<script type="application/json">`` elements, with ``<``, ``>`` and ``&``
written as ``\\u003c``-style escapes so no string (a class named ``</script>``) can end the element; everything the
page shows from it is set with ``textContent``, and the server-side HTML is escaped with :func:`html.escape`. Behind
that, the page's Content-Security-Policy runs only its own script (by hash) and fetches nothing but the video. Score
curves travel as one byte per snippet and class (probability x 255, base64): 2 hours at 4 fps and 20 classes is
about 770 kB.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

import numpy as np

from stale_cli.detection.detect import CLIP_MODE, STALE_MODE
from stale_cli.detection.detections import VideoDetections, curve_payload
from stale_cli.detection.outputs import clock, output_is_directory
from stale_cli.detection.reading import ReadingConfig
from stale_cli.fileio import check_writable, write_text_atomic

log = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".npy",)  # inputs that are feature files: no video to play
HEADER_CLASSES = 30  # class names listed in the page header; all of them have a lane
REWRITE_SECONDS = 10.0  # a page that grows with the batch is rewritten at most this often (and at the end)
MODE_TITLES = {
    STALE_MODE: f"trained STALE checkpoint (--mode {STALE_MODE})",
    CLIP_MODE: f"training-free: CLIP snippet-text similarity (--mode {CLIP_MODE})",
}


def _asset(name: str) -> str:
    return (resources.files("stale_cli.report") / "assets" / name).read_text(encoding="utf-8")


def script_json(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` survive as such,
    so neither ``</script>`` nor ``<!--`` in a string can end or change the element."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def relative_src(source: str | os.PathLike, report_dir: str | os.PathLike) -> str:
    """URL of ``source`` relative to the directory of the report (each path part percent-encoded).

    The path is made from both absolute paths as given, symbolic links not followed: the browser resolves the URL
    against the report's own address the same way, so a report written through a symlinked folder finds the video
    (made from resolved paths, ``../`` climbs out of the link's target instead). A file name that is not UTF-8 is
    encoded from its bytes (``caf%E9.mp4``). Where no relative path exists (another drive on Windows) it is an
    absolute ``file://`` URL.
    """
    target = os.path.abspath(source)
    try:
        rel = os.path.relpath(target, os.path.abspath(report_dir))
    except ValueError:
        return Path(target).as_uri()
    return "/".join(quote(os.fsencode(part)) for part in Path(rel).parts)


def _finite(x: float, digits: int) -> float:
    """``x`` rounded, 0 for NaN or infinity (JSON has neither)."""
    return round(float(x), digits) if np.isfinite(x) else 0.0


def video_payload(video: VideoDetections, classes: list[str], report_dir: Path) -> dict:
    """What the page's script needs about one video: segments as ``[lane, start, end, score, parent]``, every
    segment detection ranked (``extra["all_segments"]`` when ``stale detect`` reduced the list for reading),
    ``parent`` its own position when it is one of the kept segments, else the position of the kept segment it is an
    overlapping alternative of, or -1 / -2 (under the score floor / past the per-class limit;
    stale_cli.detection.reading). ``classes`` are the page's lanes, which hold every class of the video
    (:meth:`ReportWriter.add`)."""
    lanes = [classes.index(name) for name in video.classes]  # the video's class k is drawn in lane lanes[k]
    segments = video.extra.get("all_segments") or video.segments
    parents = video.extra.get("parents") or list(range(len(segments)))
    scores = None
    if video.scores is not None:
        scores = np.zeros((np.shape(video.scores)[0], len(classes)))  # (T, lanes): a lane of no class stays flat
        scores[:, lanes] = video.scores
    has_player = Path(video.source).suffix.lower() not in FEATURE_SUFFIXES
    return {
        "id": video.video_id,
        "source": video.source,
        "src": relative_src(video.source, report_dir) if has_player else None,
        "duration": _finite(video.duration, 4),
        "segments": [[lanes[s.class_index], _finite(s.start, 3), _finite(s.end, 3), _finite(s.score, 4), int(p)]
                     for s, p in zip(segments, parents)],
        "curves": curve_payload(video.times, scores, len(classes)),
    }


def video_section(video: VideoDetections, classes: list[str], report_dir: Path, index: int) -> str:
    """The ``<section>`` of one video: static structure (escaped) plus its data for the script."""
    e = html.escape
    data = video_payload(video, classes, report_dir)
    n = len(video.segments)
    alternatives = len(data["segments"]) - n
    more = f" (and {alternatives} overlapping or lower-scored alternatives)" if alternatives > 0 else ""
    if data["src"] is not None:
        player = (
            f'<video class="player" controls preload="metadata" src="{e(data["src"])}"></video>'
            '<p class="player-error" hidden></p>'
        )
    else:
        player = (
            '<div class="no-player"><p>Feature-file input: there is no video to play.</p>'
            "<p>Clicking a segment or the timeline moves the cursor.</p></div>"
        )
    lanes = "".join(
        f'<div class="lane" data-class="{k}" title="{e(name)}"><span class="swatch"></span>'
        f'<span class="lane-name">{e(name)}</span></div>'
        for k, name in enumerate(classes)
    )
    # Many classes (ActivityNet has 200) get thinner lanes so the timeline stays on a screen or two.
    lane_h = 34 if len(classes) <= 24 else 22
    return f"""<section class="video" id="video-{index}" data-video-id="{e(video.video_id)}" style="--lane-h: {lane_h}px">
<h2>{e(video.video_id)}</h2>
<p class="facts"><span class="source" title="{e(video.source)}">{e(video.source)}</span> · {clock(data["duration"])}
 ({data["duration"]:.1f} s) · {n} segment{'' if n == 1 else 's'}{more}</p>
<div class="top"><div class="media">{player}</div>
<div class="table" role="table" aria-label="segments of {e(video.video_id)}">
<div class="thead" role="row"><button role="columnheader" data-key="label">label</button><button role="columnheader" data-key="start">start</button><button role="columnheader" data-key="end">end</button><button role="columnheader" data-key="score">score</button></div>
<div class="rows" tabindex="0"><div class="spacer"></div></div><p class="empty" hidden>No segment at or above the score threshold.</p></div></div>
<div class="controls"><label>min score <input class="min-score" type="range" min="0" max="1" step="0.01" value="0">
<output class="min-score-value">0.00</output></label>
<label title="also the segments that overlap a better one of their class (drawn in sub-rows under it) and those past
 the per-class limit"><input class="show-all" type="checkbox"> alternatives</label>
<span class="shown"></span><span class="gap"></span>
<span class="clock"></span><button class="zoom-out" title="zoom out">−</button><button class="zoom-in" title="zoom in">+</button>
<button class="zoom-fit" title="whole video">fit</button></div>
<div class="timeline"><div class="lane-labels"><div class="axis-gap"></div>{lanes}</div>
<div class="plot"><canvas class="axis"></canvas><canvas class="lanes"></canvas><div class="playhead"></div>
<div class="tip" hidden></div></div></div>
<p class="hint">Click a segment (bar or row) to play it, n / p for the next / previous one, space to pause;
 click the timeline to seek. Ctrl + wheel zooms, shift + wheel or drag pans. Score curves are drawn on a square-root
 scale (0.1 reaches a third of the lane, 0.5 seven tenths).</p>
<script type="application/json" class="video-data">{script_json(data)}</script>
</section>"""


def header(meta: dict, generated: datetime) -> str:
    """The run's metadata: mode, checkpoint, classes, fps, CLIP model and weights, version, date."""
    e = html.escape
    classes = [str(c) for c in meta.get("classes", [])]
    mode = MODE_TITLES.get(meta.get("mode"), meta.get("mode_description") or meta.get("mode") or "?")
    fps = meta.get("fps")
    rows = [
        ("mode", mode),
        ("checkpoint", meta.get("checkpoint") or "none"),
        ("classes", f"{len(classes)}: " + ", ".join(classes[:HEADER_CLASSES])
         + (f", ... ({len(classes) - HEADER_CLASSES} more, each has its lane)" if len(classes) > HEADER_CLASSES else "")),
        ("fps", f"{fps:g} features per second" if isinstance(fps, (int, float)) else "the feature files' own"),
        ("CLIP model", f"{meta.get('clip_model', '?')} (weights: {meta.get('clip_weights', '?')})"),
        ("version", f"stale {meta.get('stale_version', '?')}"),
        ("date", generated.strftime("%Y-%m-%d %H:%M:%S %Z").strip()),
    ]
    cells = "".join(f'<dt>{e(k)}</dt><dd data-key="{e(k)}">{e(str(v))}</dd>' for k, v in rows)
    return f'<header><h1>stale detections</h1><dl class="meta">{cells}</dl></header>'


def content_policy(code: Optional[str]) -> str:
    """The page's Content-Security-Policy: our one script (by its hash) runs, nothing else does, nothing is fetched
    but the video. A second line of defence behind the escaping, and the proof that the page needs no network."""
    scripts = "'none'"
    if code is not None:
        scripts = "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii") + "'"
    return (f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; img-src data:; "
            "media-src * file: blob: data:")


def document(title: str, meta: dict, generated: datetime, body: str, code: Optional[str] = None) -> str:
    """A whole page: the run's header, then ``body``; ``code`` is the page's one script, if it has one."""
    e = html.escape
    policy = content_policy(code)
    script = f"<script>{code}</script>" if code is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{e(policy)}">
<meta name="generator" content="stale {e(str(meta.get('stale_version', '')))}">
<title>stale detections: {e(title)}</title>
<style>{_asset('report.css')}</style></head>
<body>{header(meta, generated)}{body}{script}
</body></html>
"""


def render_page(sections: list[str], ids: list[str], meta: dict, classes: list[str], generated: datetime) -> str:
    """The page of one or more videos around their already rendered sections."""
    e = html.escape
    nav = ""
    if len(ids) > 1:
        links = "".join(f'<li><a href="#video-{i}">{e(v)}</a></li>' for i, v in enumerate(ids))
        nav = f"<nav><ol>{links}</ol></nav>"
    reading = meta.get("reading")
    floor = reading.get("min_score") if isinstance(reading, dict) else None
    page = {"classes": classes, "floor": float(floor) if isinstance(floor, (int, float)) else ReadingConfig.min_score}
    body = (f"{nav}<main>{''.join(sections)}</main>"
            f'<script type="application/json" id="page-data">{script_json(page)}</script>')
    title = ids[0] if len(ids) == 1 else f"{len(ids)} videos"
    return document(title, meta, generated, body, _asset("report.js"))


INDEX_CLASSES = 8  # classes summed up per video on the index page (the best first); its page has them all


def class_colour(k: int, alpha: float = 1.0) -> str:
    """The colour of class ``k``, as the page's script draws it (golden-angle hues)."""
    return f"hsla({(k * 137.508 + 210) % 360:.1f},62%,46%,{alpha:.2f})"


def timeline_strip(video: VideoDetections, order: list[str], index: dict) -> str:
    """A small SVG of a video's segments, one row per class of ``order``, shaded by score (no script needed)."""
    duration = max(_finite(video.duration, 3), 1e-3)
    row = {name: r for r, name in enumerate(order)}
    rects = []
    for s in video.segments:
        if s.label not in row:
            continue
        x0 = 1000 * min(max(s.start / duration, 0), 1)
        x1 = 1000 * min(max(s.end / duration, 0), 1)
        rects.append(f'<rect x="{x0:.1f}" y="{6 * row[s.label] + 0.5}" width="{max(x1 - x0, 3):.1f}" height="5" '
                     f'fill="{class_colour(index.get(s.label, 0), 0.35 + 0.65 * min(max(s.score, 0), 1))}"/>')
    height = max(6 * len(order), 6)
    return (f'<svg class="strip" viewBox="0 0 1000 {height}" preserveAspectRatio="none" style="height:{height}px" '
            f'role="img" aria-label="segments over time">{"".join(rects)}</svg>')


def index_row(video: VideoDetections, page: str, classes: list[str]) -> str:
    """One video's row in the index of ``--html DIR/``: link, length, and per class found (the best first) its
    count and best score, with a timeline strip of the segments."""
    e = html.escape
    index = {name: k for k, name in enumerate(classes)}
    found: dict[str, list[float]] = {}
    for s in video.segments:
        found.setdefault(s.label, []).append(s.score)
    order = sorted(found, key=lambda name: -max(found[name]))
    summary = "".join(
        f'<li><i class="dot" style="background:{class_colour(index.get(name, 0))}"></i>{e(name)} '
        f'<span class="n">{len(found[name])} × best {max(found[name]):.2f}</span></li>'
        for name in order[:INDEX_CLASSES])
    if len(order) > INDEX_CLASSES:
        summary += f'<li class="more">{len(order) - INDEX_CLASSES} more classes</li>'
    if not order:
        summary = '<li class="more">nothing above the score floor</li>'
    return (f'<tr><td><a href="{e(quote(page))}">{e(video.video_id)}</a></td><td class="num">'
            f'{clock(_finite(video.duration, 1))}</td><td class="num">{len(video.segments)}</td>'
            f'<td><ul class="found">{summary}</ul></td>'
            f'<td class="strip-cell">{timeline_strip(video, order[:INDEX_CLASSES], index)}</td></tr>')


def index_page(rows: list[str], meta: dict, generated: datetime) -> str:
    body = ('<main><table class="index"><thead><tr><th>video</th><th class="num">length</th><th class="num">'
            f'segments</th><th>classes found (count × best score)</th><th>timeline</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></main>')
    return document(f"{len(rows)} videos", meta, generated, body)


class ReportWriter:
    """Writes the HTML report as videos finish.

    ``target`` is a file (one page with every video) or a directory (an existing one, a path ending in a separator,
    or one without extension: ``<video_id>.html`` per video, and ``index.html`` linking them, unless a video is
    itself called ``index``). Each write is atomic. A per-video page is written as its video finishes; a page that
    grows with the batch (the one file, the index) is rewritten at most every ``rewrite_seconds``, so a batch of
    thousands of videos does not rewrite it thousands of times, and :meth:`close` writes its final state.
    """

    INDEX = "index.html"

    @classmethod
    def planned(cls, target: str | os.PathLike, video_ids: list[str]) -> list[Path]:
        """Every page a report of ``video_ids`` at ``target`` writes, for the output check before any work."""
        if not output_is_directory(target):
            return [Path(target)]
        pages = [Path(target) / f"{v}.html" for v in video_ids]
        return pages + ([] if cls.INDEX in (p.name for p in pages) else [Path(target) / cls.INDEX])

    def __init__(self, target: str | os.PathLike, meta: dict, generated: Optional[datetime] = None,
                 rewrite_seconds: float = REWRITE_SECONDS):
        self.meta = meta
        self.classes = [str(c) for c in meta.get("classes", [])]
        self.generated = generated or datetime.now(timezone.utc)
        self.rewrite_seconds = rewrite_seconds
        self.written: list[Path] = []
        self._sections: list[str] = []
        self._ids: list[str] = []
        self._index_rows: list[str] = []
        self._pending: dict[Path, Callable[[], str]] = {}  # growing pages not yet written in their latest state
        self._last_write: dict[Path, float] = {}  # time.monotonic() of each growing page's last write
        self.directory: Optional[Path] = Path(target) if output_is_directory(target) else None
        self.file: Optional[Path] = None if self.directory is not None else Path(target)
        where = self.directory if self.directory is not None else self.file.parent
        check_writable(where, f"--html {target}")  # made by the first page written, not before

    def add(self, video: VideoDetections) -> Path:
        """Add one video's detections; returns the path of the report that shows it."""
        for name in video.classes:  # a class outside the run's (a video resumed from another run) gets a lane
            if name not in self.classes:
                self.classes.append(name)
        self._ids.append(video.video_id)
        if self.directory is not None:
            path = self.directory / f"{video.video_id}.html"
            section = video_section(video, self.classes, path.parent, 0)
            self._write(path, self._page([section], [video.video_id]))
            self._index_rows.append(index_row(video, path.name, self.classes))
            if self.INDEX in (f"{v}.html" for v in self._ids):  # a video's page is index.html: no index
                self._pending.pop(self.directory / self.INDEX, None)
            else:
                rows = list(self._index_rows)
                self._grow(self.directory / self.INDEX, lambda: index_page(rows, self.meta, self.generated))
        else:
            path = self.file
            self._sections.append(video_section(video, self.classes, path.parent, len(self._sections)))
            sections, ids = list(self._sections), list(self._ids)
            self._grow(path, lambda: self._page(sections, ids))
        return path

    def close(self) -> None:
        """Write every growing page in its final state."""
        for path in list(self._pending):
            self._write(path, self._pending.pop(path)())

    def __enter__(self) -> "ReportWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _page(self, sections: list[str], ids: list[str]) -> str:
        return render_page(sections, ids, dict(self.meta, classes=self.classes), self.classes, self.generated)

    def _grow(self, path: Path, render: Callable[[], str]) -> None:
        self._pending[path] = render
        if time.monotonic() - self._last_write.get(path, -math.inf) >= self.rewrite_seconds:
            self._write(path, self._pending.pop(path)())

    def _write(self, path: Path, text: str) -> None:
        write_text_atomic(path, text)
        self._last_write[path] = time.monotonic()
        if path not in self.written:
            self.written.append(path)
        log.debug("wrote %s", path)
