"""Segments longer than a window, and fragments cut by window edges (issue 15 item 5), on hand-built outputs."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from stale_cli.data.windows import (
    DataConfig, cut_windows, detection_grid, feature_timeline, plan_detection_windows, plan_windows,
)
from stale_cli.postprocess import (
    DetectConfig, Segments, WindowedVideo, _min_table, _runs_above, _runs_around, finalize, segment_tiou,
    segments_from_curve, segments_from_window,
)
from stale_cli.timeline import Timeline

FPS = 5.0
DURATION = 400.0
LONG = (100.0, 250.0)  # 150 s: longer than a window of 256 snippets at 5 fps (51.2 s)


def meta_for(num_rows: int, fps: float = FPS, duration=None) -> dict:
    return {"fps": fps, "timestamps": [k / fps for k in range(num_rows)], "duration": duration or num_rows / fps}


def window_outputs(rows: np.ndarray, instances: list[tuple[float, float, int]], K: int, tl: Timeline, T: int,
                   rng) -> tuple[np.ndarray, np.ndarray]:
    """What a good trained model gives on one window: probabilities (T, K+1) of 0.8 (or the instance's fourth
    item) for the instance's class inside an instance (0.02 elsewhere, a little noise) and masks (T, T) whose
    column t is the instance holding snippet t, as far as the window sees it."""
    centres = tl.centres()  # (T,)
    probs = np.full((T, K + 1), 0.02)
    masks = np.zeros((T, T))
    for s, e, k, *p in instances:
        inside = (centres >= s) & (centres < e) & (np.arange(T) < len(rows))
        probs[inside, k] = p[0] if p else 0.8
        masks[:, inside] = inside[:, None]
    probs[:, :K] += 0.01 * rng.random((T, K))
    probs[:, K] = 1.0 - probs[:, :K].sum(axis=1)
    return probs, masks


def windowed(num_rows: int, instances, K: int, cfg: DetectConfig, old: bool = False):
    """Every window of a ``num_rows`` video at 5 fps through WindowedVideo (or, ``old``, each window alone)."""
    rng = np.random.default_rng(0)
    meta = meta_for(num_rows)
    data_cfg = DataConfig()  # thumos14: T=256, overlap 0.5
    video, parts = WindowedVideo(num_rows, cfg), []
    for w in plan_windows(num_rows, meta, data_cfg):
        probs, masks = window_outputs(np.arange(w.start_row, w.start_row + w.valid_len), instances, K, w.timeline,
                                      data_cfg.num_snippets, rng)
        video.add(probs, masks, w.timeline, w.start_row, w.valid_len)
        parts.append(segments_from_window(probs, masks, w.timeline, w.valid_len, cfg))
    return finalize(parts if old else video.segments(), num_rows / FPS, cfg)


def tiou(det, s, e) -> float:
    return float(segment_tiou(s, e, np.array([det[1]]), np.array([det[2]]))[0])


def test_a_150s_action_is_one_segment_across_windows():
    instances = [(*LONG, 0), (300.0, 310.0, 1, 0.6)]  # plus a short, less sure one of another class
    dets = windowed(int(DURATION * FPS), instances, 2, DetectConfig())
    top = dets[0]
    assert top[0] == 0 and tiou(top, *LONG) > 0.9, top
    # Nothing else of class 0 on the action comes close to it.
    rest = [d for d in dets[1:] if d[0] == 0 and tiou(d, *LONG) > 0]
    assert all(d[3] < 0.5 * top[3] for d in rest), rest
    short = max((d for d in dets if d[0] == 1), key=lambda d: d[3])
    assert tiou(short, 300.0, 310.0) > 0.9
    # Each window alone (the former post-processing) cannot give more than a window: 51.2 s of the 150.
    old = windowed(int(DURATION * FPS), instances, 2, DetectConfig(), old=True)
    assert max(d[2] - d[1] for d in old) <= 256 / FPS + 1e-6
    assert tiou(old[0], *LONG) < 0.4


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_window_edge_fragments_are_not_kept_above_the_whole_instance(weight):
    # 20 s instance on rows 200..300: window 0 (rows 0-255) cuts it at 256, window 2 (256-511) at 256 from the other
    # side; window 1 (128-383) holds it whole.
    s, e = 40.0, 60.0
    cfg = DetectConfig(fragment_weight=weight)
    dets = [d for d in windowed(1000, [(s, e, 0)], 1, cfg) if d[0] == 0]
    top = dets[0]
    assert tiou(top, s, e) > 0.95 and top[3] > 0.7
    # The fragments [40 s, 51.2 s] and [51.2 s, 60 s] score at most fragment_weight x what they scored before.
    for frag in ((40.0, 51.2), (51.2, 60.0)):
        found = [d for d in dets if abs(d[1] - frag[0]) < 0.1 and abs(d[2] - frag[1]) < 0.1]
        assert all(d[3] <= weight * 0.8 + 1e-9 for d in found), found
        if weight == 0.0:
            assert not found
    # Without the demotion the fragments rank like the whole instance (the problem this fixes).
    old = [d for d in windowed(1000, [(s, e, 0)], 1, cfg, old=True) if d[0] == 0]
    assert sum(d[3] > 0.5 * old[0][3] for d in old) >= 2


def test_fragments_chain_through_windows_the_run_fills():
    # Fragments on a grid of 40 snippets, windows of 16 with stride 8: a run on snippets 5..35 is cut by every
    # window; a fragment at the video's start or end edge is no fragment.
    cfg = DetectConfig(thetas=(0.5,), fragment_weight=0.0)
    video = WindowedVideo(40, cfg)
    T = 16
    curve = np.where((np.arange(40) >= 5) & (np.arange(40) < 35), 0.9, 0.01)
    for w in range(0, 40 - T + 1, 8):
        probs = np.stack([curve[w : w + T], 1 - curve[w : w + T]], axis=1)
        video.add(probs, None, Timeline(w * 1.0, 1.0, T), w, T)
    segs = video.segments()
    assert list(zip(segs.starts.tolist(), segs.ends.tolist())) == [(5.0, 35.0)]
    # Its score is the whole-video curve's contrast: inside 0.9, flanks (7 snippets each side) 0.01.
    np.testing.assert_allclose(segs.scores, [0.89])


def test_training_free_path_gives_one_segment_for_a_150s_action():
    N = int(DURATION * FPS)
    t = np.arange(N) / FPS
    rng = np.random.default_rng(1)
    # A soft-edged, wobbling class curve over the action and low noise elsewhere; a second class elsewhere.
    on = 1 / (1 + np.exp(-(t - LONG[0]) / 0.5)) / (1 + np.exp(-(LONG[1] - t) / 0.5))
    c0 = 0.05 + 0.6 * on * (1 + 0.15 * np.sin(t / 3.0)) + 0.03 * rng.random(N)
    c1 = 0.05 + 0.5 * ((t >= 320) & (t < 330)) + 0.03 * rng.random(N)
    probs = np.stack([c0, c1, 1 - np.maximum(c0, c1)], axis=1)
    timeline = feature_timeline(meta_for(N), N)
    dets = finalize(segments_from_curve(probs, timeline, DetectConfig()), DURATION, DetectConfig())
    top = dets[0]
    assert top[0] == 0 and tiou(top, *LONG) > 0.9, top
    assert tiou(max((d for d in dets if d[0] == 1), key=lambda d: d[3]), 320.0, 330.0) > 0.9


def test_whole_curve_matches_the_window_path_on_one_peak():
    # One bump, one candidate: the same runs and scores as segments_from_window with masks=None.
    rng = np.random.default_rng(0)
    x = np.arange(200)
    for _ in range(20):
        c = 0.9 * np.exp(-(((x - rng.uniform(20, 180)) / rng.uniform(3, 30)) ** 2)) + 0.02 * rng.random(200)
        probs = np.stack([c, 1 - c], axis=1)
        cfg = DetectConfig(max_candidates=1)
        a = segments_from_window(probs, None, Timeline(1.0, 0.2, 200), 200, cfg)
        b = segments_from_curve(probs, Timeline(1.0, 0.2, 200), cfg, block=10**6)
        ka, kb = np.lexsort((a.ends, a.starts)), np.lexsort((b.ends, b.starts))
        for f in ("labels", "starts", "ends", "scores"):
            np.testing.assert_allclose(getattr(a, f)[ka], getattr(b, f)[kb])


def test_runs_by_binary_lifting_match_the_dense_runs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        N = int(rng.integers(1, 70))
        c = rng.random(N)
        at, level = rng.integers(0, N, size=8), rng.random(8)
        start, end = _runs_above(_min_table(c), at, level)
        fg = (c[:, None] > level[None, :])[None].copy()  # (1, N, 8)
        fg[0, at, np.arange(8)] = True
        s2, e2 = _runs_around(fg, at)
        assert start.tolist() == s2[0].tolist() and end.tolist() == e2[0].tolist()


def test_whole_curve_of_a_two_hour_video_stays_small():
    # 2 hours at 4 fps, 20 classes of noisy curves with many peaks above θ_c: no (N, candidates) arrays.
    rng = np.random.default_rng(0)
    N, K = 2 * 3600 * 4, 20
    probs = rng.random((N, K + 1)) * 0.3
    probs[5000:9000, 3] += 0.5  # a 1000 s action
    tracemalloc.start()
    try:
        segs = segments_from_curve(probs, Timeline(0.0, 0.25, N), DetectConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 150e6, peak / 1e6  # the dense path would need N x candidates x thetas (gigabytes)
    dets = finalize(segs, N * 0.25, DetectConfig())
    assert 0 < len(dets) <= 200


def test_a_long_resize_mode_video_gets_short_snippets():
    cfg = DataConfig(mode="resize", num_snippets=100, overlap=0.0)  # an ActivityNet checkpoint
    # 2 minutes: resized whole as in training.
    meta = meta_for(120, fps=1.0)
    (w,) = plan_detection_windows(120, meta, cfg)
    assert w == plan_windows(120, meta, cfg)[0] and w.timeline.step == pytest.approx(1.2)
    # 2 hours: snippets of at most max_snippet_seconds, windows of T overlapping by half, covering the video.
    N = 7200
    meta = meta_for(N, fps=1.0)
    grid = detection_grid(N, meta, cfg)
    windows = plan_detection_windows(N, meta, cfg)
    assert grid.step <= cfg.max_snippet_seconds and grid.num * grid.step == pytest.approx(7200.0)
    assert all(w.timeline.step == grid.step and w.valid_len == 100 for w in windows)
    assert windows[0].start_row == 0 and windows[-1].start_row + 100 == grid.num
    assert all(b.start_row - a.start_row <= 50 for a, b in zip(windows, windows[1:]))
    # Each window's input is the features interpolated at its snippets' centres.
    feats = np.arange(N, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row k holds k, its frame at k s
    w, x = cut_windows(feats, meta, cfg)[3]
    np.testing.assert_allclose(x[:, 0], np.clip(w.timeline.centres(), 0, N - 1), atol=1e-3)  # row k: k s


def test_a_long_resize_mode_action_is_one_segment():
    # 2 hours, an action from 1000 s to 2500 s (longer than a 300 s window): the windows' outputs join.
    cfg = DataConfig(mode="resize", num_snippets=100, overlap=0.0)
    N = 7200
    meta = meta_for(N, fps=1.0)
    grid = detection_grid(N, meta, cfg)
    rng = np.random.default_rng(0)
    video = WindowedVideo(grid.num, DetectConfig())
    for w in plan_detection_windows(N, meta, cfg):
        probs, masks = window_outputs(np.arange(100), [(1000.0, 2500.0, 0)], 1, w.timeline, 100, rng)
        video.add(probs, masks, w.timeline, w.start_row, w.valid_len)
    dets = finalize(video.segments(), 7200.0, DetectConfig())
    assert tiou(dets[0], 1000.0, 2500.0) > 0.95


def test_windowed_video_of_one_window_is_the_window_alone():
    # No internal edge: nothing is a fragment, nothing is joined.
    T = 12
    p = np.zeros((T, 2))
    p[3:9, 0] = 0.8
    p[:, 1] = 1 - p[:, 0]
    m = np.zeros((T, T))
    m[3:9, 3:9] = 1.0
    cfg = DetectConfig()
    video = WindowedVideo(T, cfg)
    video.add(p, m, Timeline(2.0, 0.5, T), 0, T)
    a, b = video.segments(), segments_from_window(p, m, Timeline(2.0, 0.5, T), T, cfg)
    assert isinstance(a, Segments)
    for f in ("labels", "starts", "ends", "scores"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f))
    # A padded single window (a video shorter than T): its valid end is the video's end, not a cut.
    video = WindowedVideo(9, replace(cfg, fragment_weight=0.0))
    video.add(p, m, Timeline(2.0, 0.5, T), 0, 9)
    assert len(video.segments()) == len(segments_from_window(p, m, Timeline(2.0, 0.5, T), 9, cfg))
