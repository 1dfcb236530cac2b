"""The HTML report of ``stale detect --html``: the generated document (escaping, relative paths, lanes, metadata)
and the CLI flag end to end. The page's behaviour in a real browser is tested in test_report_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stale_cli.detection.detections import Segment, VideoDetections, curve_payload
from stale_cli.report.report import ReportWriter, relative_src, script_json
from stale_cli.sidecar import write_features

from feature_files import detect_args, features, run_detect  # tests/ is on sys.path (rootdir conftest)
from lock_holder import hold_lock

EVIL = "<script>alert(1)</script>"
CLOSER = "</script><img src=x onerror=alert(2)><!--"
CLASSES = ["high jump", EVIL, CLOSER]
META = {
    "mode": "stale", "mode_description": "trained STALE checkpoint", "checkpoint": "weights/th75_0.pt",
    "classes": CLASSES, "fps": 4.0, "clip_model": "ViT-B-16", "clip_weights": "openai", "stale_version": "9.9.9",
}
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class Page(HTMLParser):
    """What a browser would see: elements by class, text per element, attributes, script contents."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.text: dict[int, str] = {}
        self._open: list[int] = []
        self._script = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "script":
            self._script = (attrs, [])
        if tag not in ("meta", "input", "source", "br", "img"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._script is not None:
            self._script[1].append(data)
        for i in self._open:
            self.text[i] = self.text.get(i, "") + data

    def find(self, cls=None, tag=None) -> list[int]:
        return [i for i, (t, a) in enumerate(self.elements)
                if (tag is None or t == tag) and (cls is None or cls in (a.get("class") or "").split())]

    def text_of(self, cls) -> list[str]:
        return [self.text.get(i, "") for i in self.find(cls)]

    def data(self, cls) -> list:
        return [json.loads(body) for attrs, body in self.scripts if attrs.get("class") == cls]


def detections(source, video_id="match", n_rows=40, fps=4.0) -> VideoDetections:
    times = (np.arange(n_rows) + 0.5) / fps
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(n_rows, len(CLASSES))).astype(np.float32)
    segments = [Segment(name, start, end, score, CLASSES.index(name)) for name, start, end, score in
                (("high jump", 1.0, 3.5, 0.91), (EVIL, 4.0, 6.0, 0.42), (CLOSER, 0.5, 1.0, 0.07))]
    return VideoDetections(video_id=video_id, source=str(source), duration=n_rows / fps, segments=segments,
                           times=times, scores=scores, classes=CLASSES)


def test_script_json_cannot_end_its_element():
    text = script_json({"classes": CLASSES, "path": "a&b"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"classes": CLASSES, "path": "a&b"}


def test_document_escapes_names_and_keeps_them_as_text(tmp_path):
    video = tmp_path / "videos" / "match.mp4"
    video.parent.mkdir()
    video.touch()
    writer = ReportWriter(tmp_path / "report.html", META, generated=WHEN)
    writer.add(detections(video))
    doc = (tmp_path / "report.html").read_text()
    assert EVIL not in doc and "<img" not in doc and "<!--" not in doc
    page = Page(doc)
    # Exactly our three scripts (video data, page data, code): no name opened or closed one.
    assert [a.get("class") or a.get("id") or "code" for a, _ in page.scripts] == ["video-data", "page-data", "code"]
    assert not any(t == "img" for t, _ in page.elements)
    # Behind the escaping, the page's policy lets only its own script run (by hash) and fetch nothing but media.
    (policy,) = [a["content"] for t, a in page.elements if a.get("http-equiv") == "Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(page.scripts[2][1].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and "default-src 'none'" in policy
    # The names come back as text, unchanged, in the lanes, the header and the page data.
    assert page.text_of("lane-name") == CLASSES
    assert page.data("video-data")[0]["segments"][1][0] == 1
    assert json.loads(page.scripts[1][1])["classes"] == CLASSES
    classes_dd = [page.text[i] for i in page.find(tag="dd") if page.elements[i][1].get("data-key") == "classes"]
    assert classes_dd == ["3: " + ", ".join(CLASSES)]


def test_one_lane_per_class_and_metadata(tmp_path):
    writer = ReportWriter(tmp_path / "r.html", META, generated=WHEN)
    writer.add(detections(tmp_path / "a.mp4"))
    page = Page((tmp_path / "r.html").read_text())
    lanes = page.find("lane")
    assert [page.elements[i][1]["data-class"] for i in lanes] == ["0", "1", "2"]
    meta = {page.elements[i][1]["data-key"]: page.text[i] for i in page.find(tag="dd")}
    assert set(meta) == {"mode", "checkpoint", "classes", "fps", "CLIP model", "version", "date"}
    assert meta["mode"].startswith("trained STALE checkpoint")
    assert meta["checkpoint"] == "weights/th75_0.pt"
    assert meta["fps"] == "4 features per second"
    assert meta["CLIP model"] == "ViT-B-16 (weights: openai)"
    assert meta["version"] == "stale 9.9.9"
    assert meta["date"] == "2026-01-02 03:04:05 UTC"
    many = [f"class {k}" for k in range(200)]
    ReportWriter(tmp_path / "m.html", dict(META, classes=many), generated=WHEN).add(
        VideoDetections("m", str(tmp_path / "m.mp4"), 10.0, []))
    page = Page((tmp_path / "m.html").read_text())
    meta = {page.elements[i][1]["data-key"]: page.text[i] for i in page.find(tag="dd")}
    assert meta["classes"].startswith("200: class 0, class 1,") and meta["classes"].endswith("(170 more, each has its lane)")
    assert page.text_of("lane-name") == many
    clip_meta = dict(META, mode="clip", checkpoint=None, fps=None)
    ReportWriter(tmp_path / "c.html", clip_meta, generated=WHEN).add(detections(tmp_path / "a.mp4"))
    page = Page((tmp_path / "c.html").read_text())
    meta = {page.elements[i][1]["data-key"]: page.text[i] for i in page.find(tag="dd")}
    assert meta["mode"].startswith("training-free") and meta["checkpoint"] == "none"


def test_video_src_is_relative_to_the_report_and_url_encoded(tmp_path):
    video = tmp_path / "clips" / "day 1" / "a b#1?.mp4"
    video.parent.mkdir(parents=True)
    video.touch()
    ReportWriter(tmp_path / "out" / "report.html", META, generated=WHEN).add(detections(video))
    page = Page((tmp_path / "out" / "report.html").read_text())
    (src,) = [page.elements[i][1]["src"] for i in page.find(tag="video")]
    assert src == "../clips/day%201/a%20b%231%3F.mp4"
    assert relative_src(video, video.parent) == "a%20b%231%3F.mp4"
    assert page.data("video-data")[0]["src"] == src


def test_feature_file_input_gets_a_timeline_without_player(tmp_path):
    ReportWriter(tmp_path / "r.html", META, generated=WHEN).add(detections(tmp_path / "feats" / "match.npy"))
    page = Page((tmp_path / "r.html").read_text())
    assert page.find(tag="video") == [] and len(page.find("no-player")) == 1
    assert len(page.find("lane")) == 3 and page.data("video-data")[0]["src"] is None


CLOCK_CASES = [(0, "0:00:00.0"), (0.625, "0:00:00.6"), (0.65, "0:00:00.7"), (59.96, "0:01:00.0"),
               (61.04, "0:01:01.0"), (3599.96, "1:00:00.0"), (7322.25, "2:02:02.3"), (-1, "0:00:00.0"),
               (float("nan"), "-:--:--.-")]


def test_clock_is_h_mm_ss_tenth_everywhere_for_people():
    from stale_cli.detection.outputs import clock, srt_timestamp

    assert [clock(t) for t, _ in CLOCK_CASES] == [text for _, text in CLOCK_CASES]
    assert srt_timestamp(7322.25) == "02:02:02,250"  # SRT keeps its own format


def test_a_video_of_other_classes_draws_in_their_lanes(tmp_path):
    """Lanes are the run's classes; a video with its classes in another order (or one more) has its segments and
    curves drawn in the lanes of their names, not by position."""
    scores = np.array([[0.1, 0.9], [0.2, 0.8]])
    video = VideoDetections("v", str(tmp_path / "v.mp4"), 1.0, [Segment("z", 0.0, 0.5, 0.7, 0)],
                            times=np.array([0.25, 0.75]), scores=scores, classes=("z", "high jump"))
    writer = ReportWriter(tmp_path / "r.html", META, generated=WHEN)
    writer.add(video)
    assert writer.classes == CLASSES + ["z"]
    (data,) = Page((tmp_path / "r.html").read_text()).data("video-data")
    assert data["segments"] == [[3, 0.0, 0.5, 0.7, 0]]  # lane 3, kept (its own parent)
    curves = np.stack([np.frombuffer(base64.b64decode(v), np.uint8) for v in data["curves"]["values"]], axis=1)
    np.testing.assert_allclose(curves / 255, [[0.9, 0, 0, 0.1], [0.8, 0, 0, 0.2]], atol=0.5 / 255)


def test_curves_round_trip_and_non_uniform_times():
    times = np.array([0.125, 0.375, 0.625])
    scores = np.array([[0.0, 1.0], [0.5, 0.25], [0.999, 0.004]])
    c = curve_payload(times, scores, 2)
    assert c["t0"] == 0.125 and c["step"] == 0.25 and "times" not in c
    back = np.stack([np.frombuffer(base64.b64decode(v), np.uint8) for v in c["values"]], axis=1) / 255
    np.testing.assert_allclose(back, scores, atol=0.5 / 255)
    c = curve_payload(np.array([0.0, 0.1, 0.5]), scores, 2)
    assert c["times"] == [0.0, 0.1, 0.5] and "step" not in c
    assert curve_payload(None, None, 2) is None


def test_video_without_segments_or_curves(tmp_path):
    empty = VideoDetections("quiet", str(tmp_path / "quiet.mp4"), float("nan"), [])
    ReportWriter(tmp_path / "r.html", META, generated=WHEN).add(empty)
    page = Page((tmp_path / "r.html").read_text())
    data = page.data("video-data")[0]
    assert data["segments"] == [] and data["curves"] is None and data["duration"] == 0.0
    assert "0 segments" in page.text_of("facts")[0] and len(page.find("lane")) == 3


def test_one_page_for_all_or_one_page_per_video(tmp_path):
    one = ReportWriter(tmp_path / "all.html", META, generated=WHEN, rewrite_seconds=3600)
    for vid in ("a", "b"):
        one.add(detections(tmp_path / f"{vid}.mp4", video_id=vid))
        # The growing page is written for the first video, then at most every rewrite_seconds, and on close.
        assert len(Page((tmp_path / "all.html").read_text()).find(tag="section")) == 1
    one.close()
    page = Page((tmp_path / "all.html").read_text())
    assert [page.elements[i][1]["data-video-id"] for i in page.find(tag="section")] == ["a", "b"]
    assert [page.elements[i][1]["href"] for i in page.find(tag="a")] == ["#video-0", "#video-1"]
    assert one.written == [tmp_path / "all.html"]

    with ReportWriter(tmp_path / "pages/", META, generated=WHEN, rewrite_seconds=0) as per:
        for vid in ("a", "b"):
            per.add(detections(tmp_path / f"{vid}.mp4", video_id=vid))
    assert per.written == [tmp_path / "pages" / n for n in ("a.html", "index.html", "b.html")]
    page = Page((tmp_path / "pages" / "b.html").read_text())
    assert len(page.find(tag="section")) == 1 and page.find(tag="nav") == []
    assert page.elements[page.find(tag="video")[0]][1]["src"] == "../b.mp4"
    # An index links the pages (link, length, segments, per class found: count and best score, best first, and a
    # timeline strip of the segments); it has no script at all.
    index = Page((tmp_path / "pages" / "index.html").read_text())
    assert [index.elements[i][1]["href"] for i in index.find(tag="a")] == ["a.html", "b.html"]
    rows = [index.text[i] for i in index.find(tag="tr")][1:]
    assert rows[1].startswith("b0:00:10.03high jump 1 × best 0.91<script>alert(1)</script> 1 × best 0.42")
    assert len([t for t, _ in index.elements if t == "rect"]) == 2 * 3  # one per segment, two videos
    (policy,) = [a["content"] for t, a in index.elements if a.get("http-equiv") == "Content-Security-Policy"]
    assert index.scripts == [] and "script-src 'none';" in policy


def test_index_gives_way_to_a_video_called_index(tmp_path):
    with ReportWriter(tmp_path / "pages/", META, generated=WHEN, rewrite_seconds=3600) as per:
        for vid in ("a", "b", "index"):  # the index of a and b is still pending when "index" arrives
            per.add(detections(tmp_path / f"{vid}.mp4", video_id=vid))
    assert Page((tmp_path / "pages" / "index.html").read_text()).data("video-data")[0]["id"] == "index"


def test_long_video_report_stays_small(tmp_path):
    """2 hours at 4 fps, 20 classes, 5,000 segments: one byte per snippet and class, compact segments."""
    n_rows, classes = 2 * 3600 * 4, [f"class {k}" for k in range(20)]
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 7190, 5000)
    video = VideoDetections(
        "long", str(tmp_path / "long.mp4"), 7200.0,
        [Segment(classes[i % 20], float(s), float(s + 5), float(rng.uniform()), i % 20) for i, s in enumerate(starts)],
        times=(np.arange(n_rows) + 0.5) / 4, scores=rng.uniform(size=(n_rows, 20)).astype(np.float32), classes=classes,
    )
    ReportWriter(tmp_path / "long.html", dict(META, classes=classes)).add(video)
    size = (tmp_path / "long.html").stat().st_size
    assert size < 1_200_000, size  # 768 kB of curves + ~150 kB of segments + the page


# ---- the CLI flag ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def feature_file(feature_dir):
    return feature_dir / "game.npy"


def test_cli_html_for_feature_files_and_videos(feature_file, videos, tiny_clip_name, tiny_clip_weights, tmp_path):
    r = run_detect([str(feature_file), "-c", "high jump,pole vault", "--html", str(tmp_path / "r.html"),
             "-o", str(tmp_path / "p.json")], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'r.html'}" in r.output
    page = Page((tmp_path / "r.html").read_text())
    preds = json.loads((tmp_path / "p.json").read_text())["results"]["game"]
    data = page.data("video-data")[0]
    # The page holds the full ranked list; the segments kept for reading (their own parent) are those of -o.
    kept = [s for i, s in enumerate(data["segments"]) if s[4] == i]
    assert len(kept) == len(preds) < len(data["segments"]) and data["src"] is None
    # The JSON holds 6 decimals and the page 4: compare within the page's rounding (round(round(x, 6), 4) can differ
    # from round(x, 4) in the last digit).
    np.testing.assert_allclose(sorted(s[3] for s in kept), sorted(p["score"] for p in preds), atol=6e-5)
    assert all(0 <= s[4] < len(data["segments"]) or s[4] in (-1, -2) for s in data["segments"])
    assert len(data["curves"]["values"]) == 2 and page.text_of("lane-name") == ["high jump", "pole vault"]

    r = run_detect([str(videos["cfr25"]["path"]), "-c", "a dog,a cat", "--html", str(tmp_path / "pages/")],
            tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    page = Page((tmp_path / "pages" / "cfr25.html").read_text())
    (src,) = [page.elements[i][1]["src"] for i in page.find(tag="video")]
    assert (tmp_path / "pages" / src).resolve() == videos["cfr25"]["path"].resolve()


def test_cli_html_path_that_cannot_be_created(feature_file, tiny_clip_name, tiny_clip_weights, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_detect([str(feature_file), "-c", "high jump", "--html", str(tmp_path / "afile" / "r.html")],
            tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")][0].startswith("error: --html")


# ---------------------------------------------------------------- symlinked folders, curves on a rerun, concurrent runs


def test_report_finds_the_video_through_a_symlinked_folder(run, tmp_path, videos):
    (tmp_path / "elsewhere" / "reports").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "reports").symlink_to(tmp_path / "elsewhere" / "reports")
    video = tmp_path / "work" / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    # the browser opens work/reports/r.html and resolves ../match.mp4 without following the link
    assert relative_src(video, tmp_path / "work" / "reports") == "../match.mp4"
    cwd = os.getcwd()
    os.chdir(tmp_path / "work")
    try:
        r = run(*detect_args("match.mp4", "--html", "reports/r.html"))
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    assert 'src="../match.mp4"' in (tmp_path / "elsewhere" / "reports" / "r.html").read_text()


def report_videos(page: Path) -> dict:
    """video id -> its curves payload (None: drawn without score curves) of an HTML report."""
    import json
    import re

    found = {}
    for data in re.findall(r'<script type="application/json" class="video-data">(.*?)</script>', page.read_text()):
        video = json.loads(data)
        found[video["id"]] = video["curves"]
    return found


def test_a_rerun_keeps_the_score_curves_in_the_report(run, tmp_path):
    for i in range(2):
        write_features(tmp_path / "feats" / f"v{i}.npy", *features(seed=i))
    args = detect_args(tmp_path / "feats", "-o", tmp_path / "out.json", "--html", tmp_path / "rep.html")
    assert run(*args).exit_code == 0
    first = report_videos(tmp_path / "rep.html")
    r = run(*args)
    assert r.exit_code == 0 and "2 resumed" in r.stderr
    again = report_videos(tmp_path / "rep.html")
    assert sorted(again) == ["v0", "v1"] and all(again[v] is not None for v in again)
    assert again == first  # the curves as the first run drew them (one byte per probability)


def test_concurrent_runs_into_one_report_show_every_video(run, tmp_path):
    """Run A finds v1 taken by run B, detects v0, and B records v1 before A ends: A's report has both videos, as
    its detections file has (it had only A's own)."""
    import threading

    from stale_cli.locks import lock_path

    for i in range(2):
        write_features(tmp_path / "feats" / f"v{i}.npy", *features(seed=i))
    inputs = [tmp_path / "feats" / "v1.npy", tmp_path / "feats" / "v0.npy"]
    # what run B will record for v1: the same detection made beforehand into another output
    assert run(*detect_args(inputs[0], "-o", tmp_path / "b" / "out.json", "--html", tmp_path / "b" / "r.html"))\
        .exit_code == 0
    record = (tmp_path / "b" / ".out.json.journal").read_bytes()
    out = tmp_path / "out.json"
    holder = hold_lock(out.with_name("out.json.v1"))  # B is detecting v1

    def b_finishes_v1():  # once A has taken v0 (so it has left v1 to B), B records v1
        while not lock_path(out.with_name("out.json.v0")).exists():
            threading.Event().wait(0.002)
        with open(tmp_path / ".out.json.journal", "ab") as f:
            f.write(record)

    b = threading.Thread(target=b_finishes_v1, daemon=True)
    b.start()
    try:
        r = run(*detect_args(*inputs, "-o", out, "--html", tmp_path / "rep.html"))
    finally:
        holder.kill()
        holder.wait()
    b.join(timeout=10)
    import json

    assert r.exit_code == 0 and "left to another run" in r.stderr
    assert sorted(json.loads(out.read_text())["results"]) == ["v0", "v1"]
    shown = report_videos(tmp_path / "rep.html")
    assert sorted(shown) == ["v0", "v1"] and shown["v1"] is not None
