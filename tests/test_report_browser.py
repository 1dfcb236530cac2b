"""The HTML report in a real browser: headless Chromium loads a report made by ``stale detect --html`` from a short
real video (VP8 WebM, which Chromium plays), a real mouse click on a segment seeks the video to its start, table
rows seek too, the score slider hides segments, and no class name runs as script.

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it); skipped with the reason when it is
absent. The screenshot is kept: ``$STALE_TEST_ARTIFACTS/report.png`` when that variable is set, else in pytest's
temporary directory; its path is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chromium import Chromium, find_chromium  # tests/ is on sys.path (rootdir conftest)
from conftest import make_video
from stale_cli.cli import app

CHROMIUM = find_chromium()


def _has_vp8_encoder() -> bool:
    import av

    return "libvpx" in av.codecs_available


pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium not found: apt-get install chromium (or set STALE_CHROMIUM=/path/to/chromium) to run the "
        "report's browser test",
    ),
    pytest.mark.skipif(not _has_vp8_encoder(), reason="this PyAV has no libvpx to write the test's WebM video"),
]
BEST_BAR = """(() => { const r = [...window.staleReports.values()][0]; let b = 0;
    for (let i = 0; i < r.n; i++) if (r.score[i] > r.score[b]) b = i;
    const box = r.canvas.getBoundingClientRect(), [y, h] = r.barY(b);
    return [box.left + r.toX((r.s[b] + r.e[b]) / 2), box.top + y + h / 2, r.s[b]]; })()"""
CLASSES = ["high jump", "pole vault", "<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 2">']
REPORT = "(() => [...window.staleReports.values()][0])()"


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_clip_name, tiny_clip_weights):
    """A report in out/ made by `stale detect --html` from videos/clip.webm (12 s, scene changes at 4 s and 8 s)."""
    d = tmp_path_factory.mktemp("browser")
    (d / "videos").mkdir()
    video = make_video(d / "videos" / "clip.webm", [Fraction(i, 25) for i in range(300)], Fraction(1, 1000),
                       codec="libvpx", cuts=(4.0, 8.0))
    common = ["--classes", ",".join(CLASSES), "--min-score", "0.01", "--clip-model", tiny_clip_name,
              "--clip-weights", str(tiny_clip_weights), "--no-progress"]
    r = CliRunner().invoke(app, ["detect", str(video), "--html", str(d / "out" / "report.html"), "-o",
                                 str(d / "out" / "preds.json"), "--cache-features", str(d / "feats"), *common])
    assert r.exit_code == 0, r.output
    preds = json.loads((d / "out" / "preds.json").read_text())["results"]["clip"]
    assert preds, "the tiny CLIP found no segment to click"
    r = CliRunner().invoke(app, ["detect", str(d / "feats" / "clip.npy"), "--html", str(d / "out" / "feats.html"),
                                 *common])
    assert r.exit_code == 0, r.output
    return d / "out" / "report.html", preds


def artifacts_dir(tmp_path) -> Path:
    where = os.environ.get("STALE_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_report_in_chromium(report, tmp_path):
    path, preds = report
    with Chromium(CHROMIUM, width=1280, height=900) as browser:
        browser.call("Page.addScriptToEvaluateOnNewDocument", {"source": "window.__blocked = []; document."
                     "addEventListener('securitypolicyviolation', (e) => window.__blocked.push(e.violatedDirective));"})
        browser.open(path.as_uri())
        browser.wait_for("window.staleReports && window.staleReports.size === 1")
        # The player found the video by its relative path and can play it.
        assert browser.evaluate("document.querySelector('video').getAttribute('src')") == "../videos/clip.webm"
        browser.wait_for("document.querySelector('video').readyState >= 1 || document.querySelector('video').error")
        assert browser.evaluate("document.querySelector('video').error") is None
        assert browser.evaluate("document.querySelector('video').duration") == pytest.approx(12.0, abs=0.1)

        # It opens best first, at the score floor the detections were reduced with (--min-score 0.01 here), showing
        # the kept segments; "alternatives" adds the overlapping ones, each under the segment it is an alternative
        # of, in the table and in sub-rows of its lane (the lane grows).
        assert browser.evaluate("document.querySelector('.thead button[data-key=score]').getAttribute('aria-sort')") \
            == "descending"
        assert browser.evaluate("document.querySelector('input.min-score').value") == "0.01"
        assert browser.evaluate(f"{REPORT}.order.map(i => {REPORT}.score[i])") == sorted(
            (pytest.approx(p["score"], abs=1e-4) for p in preds), key=lambda a: -a.expected)
        n_all = browser.evaluate(f"(() => {{ const r = {REPORT}; let c = 0; for (let i = 0; i < r.n; i++) "
                                 "c += r.score[i] >= r.minScore; return c; })()")
        height = browser.evaluate(f"{REPORT}.canvas.clientHeight")
        browser.evaluate("document.querySelector('input.show-all').click()")
        assert browser.evaluate(f"{REPORT}.order.length") == n_all > len(preds)
        assert browser.evaluate(f"""(() => {{ const r = {REPORT}; return r.order.every((i, j) => r.parent[i] === i ||
            r.parent[i] < 0 || r.order.indexOf(r.parent[i]) < j); }})()""")
        assert browser.evaluate(f"{REPORT}.canvas.clientHeight") > height
        browser.evaluate("document.querySelector('input.show-all').click()")
        assert browser.evaluate(f"{REPORT}.order.length") == len(preds)
        assert browser.evaluate(f"{REPORT}.canvas.clientHeight") == height

        # The page writes times as the Python side does (one format for people: h:mm:ss.s).
        from stale_cli.detection.outputs import clock

        times = [0, 0.05, 0.625, 0.65, 59.96, 61.04, 3599.96, 7322.25, -1]
        assert browser.evaluate(f"{json.dumps(times)}.map(window.staleClock)") == [clock(t) for t in times]

        # Class names are text, never markup that runs.
        assert browser.evaluate("window.__xss === undefined && !document.querySelector('main img')")
        assert browser.evaluate("[...document.querySelectorAll('.lane-name')].map(e => e.textContent)") == CLASSES
        assert browser.evaluate("document.querySelectorAll('.lane').length") == len(CLASSES)
        # The page itself breaks none of its Content-Security-Policy; a script slipped in would not run.
        assert browser.evaluate("window.__blocked") == []
        assert browser.evaluate("""(() => { const s = document.createElement('script'); s.textContent = 'window.__xss = 3';
            document.body.appendChild(s); return window.__xss === undefined; })()""")

        # A real mouse click on the best segment's bar seeks the video to the segment's start and plays it.
        best = max(preds, key=lambda p: p["score"])
        x, y, _ = browser.evaluate(BEST_BAR)
        start = best["segment"][0]
        far = 11.5 if start < 6 else 0.0  # start from far away, so only the click can bring the video there
        browser.evaluate(f"document.querySelector('video').currentTime = {far}")
        browser.wait_for("!document.querySelector('video').seeking")
        browser.click(x, y)
        assert start - 0.01 <= browser.evaluate("document.querySelector('video').currentTime") < start + 0.5
        browser.wait_for("!document.querySelector('video').seeking && document.querySelector('video').currentTime > "
                         f"{start} + 0.2", timeout=10)
        assert browser.evaluate("document.querySelector('video').paused") is False
        assert browser.evaluate(f"{REPORT}.score[{REPORT}.selected]") == pytest.approx(best["score"], abs=1e-4)
        # The playhead follows the playing video.
        assert browser.evaluate(f"Math.abs({REPORT}.time - document.querySelector('video').currentTime) < 0.5")
        browser.evaluate("document.querySelector('video').pause()")

        # Sorting by start (a click toggles the order), then clicking the first row seeks to its segment.
        browser.evaluate("document.querySelector('.thead button[data-key=start]').click()")
        browser.wait_for("document.querySelector('.thead button[data-key=start]').getAttribute('aria-sort')")
        order = browser.evaluate("document.querySelector('.thead button[data-key=start]').getAttribute('aria-sort')")
        first = min(p["segment"][0] for p in preds) if order == "ascending" else max(p["segment"][0] for p in preds)
        rx, ry = browser.evaluate("""(() => { const row = [...document.querySelectorAll('.row')]
            .find(r => r.style.display !== 'none' && r.style.top === '0px');
            const b = row.getBoundingClientRect(); return [b.left + b.width / 2, b.top + b.height / 2]; })()""")
        far = 11.5 if first < 6 else 0.0  # start from far away, so only the click can bring the video there
        browser.evaluate(f"(() => {{ const v = document.querySelector('video'); v.pause(); v.currentTime = {far}; }})()")
        browser.wait_for("!document.querySelector('video').seeking")
        browser.click(rx, ry)
        assert first - 0.01 <= browser.evaluate("document.querySelector('video').currentTime") < first + 0.5
        browser.evaluate("document.querySelector('video').pause()")

        # The score slider hides segments below it, in the table and on the timeline.
        threshold = sorted(p["score"] for p in preds)[len(preds) // 2]
        browser.evaluate(f"""(() => {{ const s = document.querySelector('input.min-score');
            s.value = {threshold}; s.dispatchEvent(new Event('input')); }})()""")
        kept = sum(round(p["score"], 4) >= round(threshold, 2) for p in preds)  # the slider's step is 0.01
        assert browser.evaluate(f"{REPORT}.order.length") == kept
        assert browser.evaluate("document.querySelector('.shown').textContent") == f"{kept} of {len(preds)} segments shown"
        browser.evaluate("""(() => { const s = document.querySelector('input.min-score');
            s.value = 0; s.dispatchEvent(new Event('input')); })()""")

        shot = browser.screenshot(artifacts_dir(tmp_path) / "report.png")
    print(f"\nreport screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        colours = im.convert("RGB").resize((64, 45)).getcolors(maxcolors=64 * 45)
        assert len(colours) > 50  # a rendered page, not a blank one


def test_feature_file_report_and_zoom_in_chromium(report):
    """Without a player, a click on a segment moves the cursor to its start; the zoom buttons change the view."""
    path, preds = report
    with Chromium(CHROMIUM, width=1280, height=900) as browser:
        browser.open(path.with_name("feats.html").as_uri())
        browser.wait_for("window.staleReports && window.staleReports.size === 1")
        assert browser.evaluate("document.querySelector('video') === null && !!document.querySelector('.no-player')")
        x, y, start = browser.evaluate(BEST_BAR)
        assert start == pytest.approx(max(preds, key=lambda p: p["score"])["segment"][0], abs=1e-3)
        browser.click(x, y)
        assert browser.evaluate(f"{REPORT}.time") == pytest.approx(start, abs=1e-6)
        from stale_cli.detection.outputs import clock

        assert browser.evaluate("document.querySelector('.clock').textContent") == f"{clock(start)} / 0:00:12.0"
        # "n" plays the next segment of the table (sorted by start): the cursor goes to its start.
        following = browser.evaluate(f"(() => {{ const r = {REPORT}; return r.s[r.order[Math.min(r.order.indexOf(r.selected) + 1, r.order.length - 1)]]; }})()")
        browser.press("n")
        assert browser.evaluate(f"{REPORT}.time") == pytest.approx(following, abs=1e-6)

        assert browser.evaluate(f"{REPORT}.view") == pytest.approx([0, 12.0], abs=0.01)
        browser.evaluate("document.querySelector('.zoom-in').click()")
        a, b = browser.evaluate(f"{REPORT}.view")
        assert b - a == pytest.approx(6.0, abs=0.01) and a <= following <= b  # halved, around the cursor ("n" moved it)
        browser.evaluate("document.querySelector('.zoom-fit').click()")
        assert browser.evaluate(f"{REPORT}.view") == pytest.approx([0, 12.0], abs=0.01)
