"""Does the ``stale detect --html`` report stay responsive on a long video? (issue 10)

    python benchmarks/report.py                                # 2-hour report, 5,000 segments, vs a 1-minute one
    python benchmarks/report.py --screenshot docs/report.png   # the docs' screenshots (a real report, see below)
    python benchmarks/report.py --compare-js old.js            # A/B: the long report with another report.js

Responsiveness: two reports are written with ``stale_cli.report.report.ReportWriter`` from synthetic detections, each
with a real VP8 WebM of its length (a 10 s clip made with PyAV, its packets looped): a **2-hour** video with 20 classes,
score curves at 4 fps (28,800 rows per class) and **5,000 segments**, and a 1-minute one with 20 segments as the
baseline. Each is opened in headless Chromium (``tests/chromium.py``: the DevTools protocol over a pipe, 1280x900)
and measured in the page with the Performance API:

- *ready*: from navigation start to the end of the report's set-up (``performance.measure("stale:init ...")``);
- *redraw*: one full timeline redraw (every lane, curve and bar; median of 30);
- *frame intervals* (``requestAnimationFrame`` timestamps) while the table is scrolled by 10 rows per frame, while
  the timeline is panned by 0.5% of the video per frame (a full redraw each frame), and while the video plays with
  the playhead following it; a frame over 50 ms is visible lag;
- *sort* and *slider*: the time of the click on the "score" header and of one slider ``input`` event;
- *long tasks*: main-thread tasks over 50 ms seen by a ``PerformanceObserver``, per phase of the session.

Screenshots: ``stale detect`` on two 40 s stretches of OpenCV's ``vtest.avi`` (Debian's ``opencv-doc``, fetched as
``benchmarks/extract.py`` does; transcoded to VP8 so a browser plays it) with the test suite's tiny random CLIP
(no real CLIP weights are available where this was made): the page, player and interactions are real, the
detections are not meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the Chromium driver and the synthetic video of the test suite

CACHE = Path(os.environ.get("STALE_BENCH_CACHE", Path(tempfile.gettempdir()) / "stale-bench"))


def looped_webm(seconds: float) -> Path:
    """A 96x64 VP8 WebM of ``seconds``: a 10 s clip (25 fps) whose packets are repeated with shifted times."""
    import av

    from conftest import make_video

    dst = CACHE / f"report_{seconds:g}s.webm"
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    clip = make_video(CACHE / "report_clip.webm", [Fraction(i, 25) for i in range(250)], Fraction(1, 1000),
                      codec="libvpx", cuts=(3.0, 6.0))
    tmp = dst.with_suffix(".tmp.webm")
    with av.open(str(clip)) as inp, av.open(str(tmp), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        packets = [p for p in inp.demux(s_in) if p.size and p.pts is not None]
        times = [(p.pts, p.dts) for p in packets]
        span = round(10 / s_in.time_base)
        for loop in range(int(seconds // 10)):
            for p, (pts, dts) in zip(packets, times):
                p.pts, p.dts = pts + loop * span, (dts + loop * span if dts is not None else None)
                p.stream = s_out
                out.mux(p)
    tmp.replace(dst)
    return dst


def synthetic_report(path: Path, seconds: float, num_segments: int, num_classes: int = 20, fps: float = 4.0) -> Path:
    """A report of ``seconds`` of video with smooth random score curves and random segments."""
    import numpy as np

    from stale_cli.detection.detections import Segment, VideoDetections
    from stale_cli.report.report import ReportWriter

    rng = np.random.default_rng(0)
    classes = [f"action {k}" for k in range(num_classes)]
    n = int(seconds * fps)
    times = (np.arange(n) + 0.5) / fps
    scores = np.zeros((n, num_classes), np.float32)
    for k in range(num_classes):  # bumps of 5-60 s, like actions
        for c in rng.uniform(0, seconds, max(2, int(seconds / 60))):
            scores[:, k] = np.maximum(scores[:, k], rng.uniform(0.2, 1) * np.exp(-0.5 * ((times - c) / rng.uniform(2, 20)) ** 2))
    starts = rng.uniform(0, seconds - 5, num_segments)
    segments = []
    for s in starts:
        k = int(rng.integers(num_classes))
        segments.append(Segment(classes[k], float(s), float(min(s + rng.uniform(2, 60), seconds)),
                                float(rng.uniform()), k))
    video = looped_webm(seconds)
    meta = {"mode": "clip", "checkpoint": None, "classes": classes, "fps": fps, "clip_model": "ViT-B-16",
            "clip_weights": "openai", "stale_version": "benchmark"}
    ReportWriter(path, meta).add(VideoDetections(video.stem, str(video), seconds, segments, times=times, scores=scores,
                                                 classes=classes))
    return path


FRAMES_JS = """new Promise((done) => {
  const r = [...window.staleReports.values()][0], step = %s, n = %d, stamps = [];
  let i = 0;
  const frame = (t) => { stamps.push(t); if (i++ >= n) return done(stamps.slice(1).map((s, j) => s - stamps[j]));
    step(r, i); requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
})"""


def frames(browser, step_js: str, n: int = 120) -> dict:
    gaps = browser.evaluate(FRAMES_JS % (step_js, n))
    gaps.sort()
    return {"median_ms": statistics.median(gaps), "p95_ms": gaps[int(0.95 * (len(gaps) - 1))], "max_ms": gaps[-1],
            "over_50ms": sum(g > 50 for g in gaps)}


def take_long_tasks(browser) -> list[int]:
    """Long tasks (ms) seen since the last call; two frames' wait lets the observer deliver them."""
    return browser.evaluate("""new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(
        () => done(window.__long.splice(0).map(Math.round)))))""")


def measure(report: Path) -> dict:
    from chromium import Chromium, find_chromium

    exe = find_chromium()
    if exe is None:
        sys.exit("Chromium not found: apt-get install chromium (or set STALE_CHROMIUM)")
    with Chromium(exe, width=1280, height=900, timeout=120) as b:
        b.call("Page.addScriptToEvaluateOnNewDocument", {"source": """window.__long = [];
            new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration)))
              .observe({type: 'longtask', buffered: true});"""})
        b.open(report.as_uri())
        b.wait_for("window.staleReports && window.staleReports.size === 1", timeout=60)
        b.wait_for("document.querySelector('video').readyState >= 1", timeout=60)
        ready, init = b.evaluate("""(() => { const m = performance.getEntriesByType('measure')
            .find((e) => e.name.startsWith('stale:init')); return m ? [m.startTime + m.duration, m.duration] : [null, null]; })()""")
        out = {"ready_ms": ready, "init_ms": init, "html_bytes": report.stat().st_size}
        long_tasks = out["long_tasks_ms"] = {"opening": take_long_tasks(b)}  # per phase
        out["redraw_ms"] = statistics.median(b.evaluate("""(() => { const r = [...window.staleReports.values()][0], t = [];
            for (let i = 0; i < 30; i++) { const t0 = performance.now(); r.draw(); t.push(performance.now() - t0); }
            return t; })()"""))
        long_tasks["30 redraws in one task"] = take_long_tasks(b)
        out["table_scroll"] = frames(b, "(r, i) => { r.rows.scrollTop = i * 280; }")
        long_tasks["table scroll"] = take_long_tasks(b)
        out["timeline_pan"] = frames(b, "(r, i) => { const w = r.duration * 0.004; r.setView(i * w, i * w + r.duration / 2); }")
        long_tasks["timeline pan"] = take_long_tasks(b)
        b.evaluate("(() => { const r = [...window.staleReports.values()][0]; r.setView(0, r.duration); "
                   "const v = document.querySelector('video'); v.muted = true; return v.play(); })()")
        out["playing"] = frames(b, "(r, i) => {}", n=90)
        b.evaluate("document.querySelector('video').pause()")
        long_tasks["playing"] = take_long_tasks(b)
        out["sort_ms"] = b.evaluate("""(() => { const t0 = performance.now();
            document.querySelector('.thead button[data-key=score]').click(); return performance.now() - t0; })()""")
        out["slider_ms"] = b.evaluate("""(() => { const s = document.querySelector('input.min-score'), t0 = performance.now();
            s.value = 0.5; s.dispatchEvent(new Event('input')); return performance.now() - t0; })()""")
        out["segments_shown_at_0.5"] = b.evaluate("document.querySelector('.shown').textContent")
        long_tasks["sort and slider"] = take_long_tasks(b)
    return out


def screenshot(path: Path, seed: int) -> None:
    """``stale detect --html DIR/`` on two stretches of vtest.avi (0-40 s and 40-79 s) with the tiny random CLIP,
    then screenshots of one video's page mid-playback (``path``), with its overlapping alternatives shown
    (``<stem>-alternatives.png``), 420 px wide (``<stem>-narrow.png``), and of the index (``<stem>-index.png``)."""
    import time

    import av
    import open_clip
    import torch
    from typer.testing import CliRunner

    from chromium import Chromium, find_chromium
    from conftest import TINY_CLIP_CONFIG, TINY_CLIP_NAME

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from extract import fetch_vtest  # benchmarks/extract.py

    from stale_cli.cli import app

    work = CACHE / "screenshot"
    (work / "videos").mkdir(parents=True, exist_ok=True)
    videos = []
    for name, t0, t1 in (("vtest-street", 0, 40), ("vtest-later", 40, 80)):
        video = work / "videos" / f"{name}.webm"
        videos.append(video)
        if video.is_file():
            continue
        with av.open(str(fetch_vtest(CACHE))) as inp, av.open(str(video), "w") as out:
            s_in = inp.streams.video[0]
            s_out = out.add_stream("libvpx", rate=s_in.average_rate)
            s_out.width, s_out.height, s_out.pix_fmt = s_in.width, s_in.height, "yuv420p"
            s_out.bit_rate = 1_500_000
            for frame in inp.decode(s_in):
                if frame.time < t0:
                    continue
                if frame.time > t1:
                    break
                frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                for p in s_out.encode(frame.reformat(format="yuv420p")):
                    out.mux(p)
            for p in s_out.encode():
                out.mux(p)
    (work / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(work / f"{TINY_CLIP_NAME}.json")
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(TINY_CLIP_NAME, pretrained=None).state_dict(), work / "tiny_clip.pt")
    report = work / "report"
    r = CliRunner().invoke(app, ["detect", *map(str, videos), "--classes",
                                 "walking,standing still,carrying a bag,running,talking", "--html", f"{report}/",
                                 "--clip-model", TINY_CLIP_NAME, "--clip-weights", str(work / "tiny_clip.pt"),
                                 "--no-distractors", "--no-progress"])
    if r.exit_code:
        sys.exit(r.output)
    best_bar = """(() => { const r = [...window.staleReports.values()][0]; let b = 0;
        for (let i = 0; i < r.n; i++) if (r.visible(i) && r.score[i] > r.score[b]) b = i;
        const box = r.canvas.getBoundingClientRect(), [y, h] = r.barY(b);
        return [box.left + r.toX((r.s[b] + r.e[b]) / 2), box.top + y + h / 2]; })()"""
    page = (report / f"{videos[0].stem}.html").as_uri()
    ready = "window.staleReports && window.staleReports.size === 1 && document.querySelector('video').readyState >= 2"
    shots = {name: path.with_name(f"{path.stem}-{name}{path.suffix}") for name in ("alternatives", "narrow", "index")}
    with Chromium(find_chromium(), width=1280, height=860) as b:
        b.open(page)
        b.wait_for(ready)
        x, y = b.evaluate(best_bar)
        b.click(x, y)  # plays the best segment
        time.sleep(1.5)
        b.evaluate("document.querySelector('video').pause()")
        b.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})  # its tooltip
        time.sleep(0.3)
        b.screenshot(path)
        b.evaluate("(() => { const c = document.querySelector('input.show-all'); c.click(); })()")
        time.sleep(0.3)
        b.evaluate("document.querySelector('.timeline').scrollIntoView({block: 'end'})")
        b.screenshot(shots["alternatives"])
    with Chromium(find_chromium(), width=1280, height=420) as b:
        b.open((report / "index.html").as_uri())
        b.wait_for("!!document.querySelector('table.index')")
        b.screenshot(shots["index"])
    with Chromium(find_chromium(), width=420, height=900) as b:
        b.open(page)
        b.wait_for(ready)
        b.evaluate("document.querySelector('.controls').scrollIntoView({block: 'start'})")
        time.sleep(0.3)
        b.screenshot(shots["narrow"])
    for p in (path, *shots.values()):
        print(f"wrote {p}")


def compare_js(work: Path, other_js: Path, seconds: float, num_segments: int) -> None:
    """The same long report with the current and with another report.js, measured alternately, twice."""
    import html

    from stale_cli.report.report import _asset, content_policy

    current = synthetic_report(work / "current.html", seconds, num_segments)
    doc, js, other_code = current.read_text(), _asset("report.js"), other_js.read_text()
    assert js in doc
    other = work / "other.html"  # the other script, and the page's policy allowing it instead
    policy = html.escape(content_policy(js))
    other.write_text(doc.replace(js, other_code).replace(policy, html.escape(content_policy(other_code))))
    for round_ in (1, 2):
        for name, page in ((str(other_js), other), ("current", current)):
            r = measure(page)
            print(round_, name, json.dumps({k: r[k] for k in ("redraw_ms", "timeline_pan", "slider_ms")}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--screenshot", type=Path, help="only write the docs' screenshots (this PNG and three beside it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the tiny random CLIP used for the screenshot")
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--segments", type=int, default=5000)
    ap.add_argument("--compare-js", type=Path, help="A/B: also measure the long report with this report.js inlined "
                    "instead (e.g. an older version from git show), alternating with the current one, twice")
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args.screenshot, args.seed)
        return
    work = Path(tempfile.mkdtemp(prefix="stale-report-bench-"))
    if args.compare_js:
        compare_js(work, args.compare_js, args.minutes * 60, args.segments)
        return
    results = {}
    for name, seconds, n in (("1 min, 20 segments", 60.0, 20), (f"{args.minutes:g} min, {args.segments} segments",
                                                                  args.minutes * 60, args.segments)):
        results[name] = measure(synthetic_report(work / f"{int(seconds)}.html", seconds, n))
        print(name, json.dumps(results[name]), flush=True)
    small, big = results.values()
    print(f"redraw ratio (long / short): {big['redraw_ms'] / max(small['redraw_ms'], 1e-3):.1f}x")


if __name__ == "__main__":
    main()
