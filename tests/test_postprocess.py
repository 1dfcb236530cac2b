"""Post-processing (stale_cli/model/postprocess.py) on hand-made model outputs with known answers: segment extraction,
Soft-NMS and per-video finalisation; segments longer than a window and fragments cut by window edges joined across
the windows of a video; the whole-video curve of the training-free mode."""

import math
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from stale_cli.model.data.windows import (DataConfig, detection_grid, feature_timeline, plan_detection_windows,
                                         plan_windows)
from stale_cli.model.postprocess import (
    DetectConfig, Segments, WindowedVideo, _min_table, _runs_above, _runs_around, finalize, segment_tiou,
    segments_from_curve, segments_from_window, soft_nms,
)
from stale_cli.timeline import Timeline


def _probs(T, K, fg):
    """(T, K+1) probabilities: ``fg`` maps (snippet, class) -> prob, the rest of each row is background."""
    p = np.zeros((T, K + 1))
    for (t, k), v in fg.items():
        p[t, k] = v
    p[:, K] = 1.0 - p[:, :K].sum(axis=1)
    return p


def test_window_with_known_answer_in_seconds():
    # Class 0 at snippets 3..5 (prob 0.8); their mask columns say snippets 2..5 at 0.9.
    # Every θ < 0.9 gives run [2, 6); θ = 0.9 gives nothing (0.9 is not > 0.9 and no neighbour is).
    # Snippet i covers [10 + 0.5 i, 10 + 0.5 (i + 1)): [2, 6) -> [11 s, 13 s].
    # Score: class probability 0.8 times the mask contrast: inside 0.9, flanks of max(1, 4 // 4) = 1 snippet
    # (rows 1 and 6) 0 -> 0.8 * 0.9 = 0.72.
    T = 10
    p = _probs(T, 2, {(3, 0): 0.8, (4, 0): 0.8, (5, 0): 0.8})
    m = np.zeros((T, T))
    m[2:6, 3:6] = 0.9
    segs = segments_from_window(p, m, Timeline(10.0, 0.5, T), T, DetectConfig(mask_weight=1.0))
    assert segs.labels.tolist() == [0]
    np.testing.assert_allclose(segs.starts, [11.0])
    np.testing.assert_allclose(segs.ends, [13.0])
    np.testing.assert_allclose(segs.scores, [0.72])


def test_runs_touching_the_candidate_are_joined():
    # Candidate snippet 5 (class 1, prob 0.5); its mask column: 0.8 on 2..4, 0 on 5, 0.6 on 6..7.
    # θ 0.5: runs [2,5) and [6,8) touch 5 -> [2, 8); inside (3*0.8 + 0 + 2*0.6) / 6 = 0.6, flanks (rows 1, 8) 0
    #   -> score 0.5 * 0.6 = 0.3.
    # θ 0.7: [2,5) touches 5 -> [2, 6); inside 2.4 / 4 = 0.6, flanks row 1 (0) and row 6 (0.6) -> 0.3
    #   -> 0.5 * 0.3 = 0.15.  θ 0.9: nothing touches -> no segment.
    T = 12
    p = _probs(T, 2, {(5, 1): 0.5})
    m = np.zeros((T, T))
    m[2:5, 5] = 0.8
    m[6:8, 5] = 0.6
    cfg = DetectConfig(thetas=(0.5, 0.7, 0.9), mask_weight=1.0)
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), T, cfg)
    got = sorted(zip(segs.labels.tolist(), segs.starts.tolist(), segs.ends.tolist(), segs.scores.tolist()))
    np.testing.assert_allclose(got, [(1, 2.0, 6.0, 0.15), (1, 2.0, 8.0, 0.3)])


def test_a_fragment_of_an_instance_scores_below_the_whole_instance():
    # Class 0 on snippets 2..9, best at snippet 5 (0.81); candidate 5's mask: 0.6 on 2..9, peak 0.95 on 5..6.
    # θ 0.5 -> [2, 10): inside (6 * 0.6 + 2 * 0.95) / 8 = 0.6875, flanks of 2 (rows 0-1, 10-11) 0 -> 0.81 * 0.6875.
    # θ 0.9 -> [5, 7): inside 0.95, flanks of 1 (rows 4 and 7) 0.6 -> 0.81 * 0.35. The mean mask inside alone
    # would rank the fragment first (0.81 * 0.95 against 0.81 * 0.6875).
    T = 12
    p = _probs(T, 1, {(t, 0): 0.8 for t in range(2, 10)})
    m = np.zeros((T, T))
    m[2:10, 5] = 0.6
    m[5:7, 5] = 0.95
    p[5, 0], p[5, 1] = 0.81, 0.19  # snippet 5 is the best candidate
    cfg = DetectConfig(thetas=(0.5, 0.9), max_candidates=1, mask_weight=1.0)
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), T, cfg)
    got = sorted(zip(segs.starts.tolist(), segs.ends.tolist(), segs.scores.tolist()), key=lambda s: -s[2])
    np.testing.assert_allclose(got, [(2.0, 10.0, 0.81 * 0.6875), (5.0, 7.0, 0.81 * 0.35)])


def test_candidates_threshold_limit_and_padding():
    T = 8
    p = _probs(T, 3, {(1, 0): 0.9, (2, 1): 0.35, (3, 2): 0.05, (7, 0): 0.99})  # snippet 7 is padding
    m = np.eye(T) * 0.95
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), 7, DetectConfig(theta_c=0.1))
    assert sorted(segs.labels.tolist()) == [0, 1]  # class 2 is below θ_c, snippet 7 beyond valid_len
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), 7, DetectConfig(theta_c=0.1, max_candidates=1))
    assert segs.labels.tolist() == [0] and segs.starts.tolist() == [1.0] and segs.ends.tolist() == [2.0]


def test_training_free_mode_uses_the_class_curve_relative_to_the_candidate():
    # Class-0 curve 0 0 .2 .6 .8 .4 .1 0; the best candidate is snippet 4 (0.8). Relative curve
    # 0 0 .25 .75 1 .5 .125 0: above θ = 0.5 on [3, 5); inside (0.75 + 1) / 2 = 0.875, flanks (rows 2 and 5)
    # (0.25 + 0.5) / 2 = 0.375 -> score 0.8 * 0.5 = 0.4.
    T = 8
    curve = [0, 0, 0.2, 0.6, 0.8, 0.4, 0.1, 0]
    p = _probs(T, 1, {(t, 0): v for t, v in enumerate(curve)})
    cfg = DetectConfig(theta_c=0.3, thetas=(0.5,), max_candidates=1)
    segs = segments_from_window(p, None, Timeline(0.0, 2.0, T), T, cfg)
    assert segs.starts.tolist() == [6.0] and segs.ends.tolist() == [10.0]
    np.testing.assert_allclose(segs.scores, [0.4])


def test_masks_blend_with_the_class_curve():
    # Candidate snippet 4 (class 0, 0.8); class curve 0 0 .4 .6 .8 .6 .4 0 -> relative 0 0 .5 .75 1 .75 .5 0.
    # Its mask column: 1 on 3..4, 0 elsewhere. mask_weight 0.5: 0 0 .25 .875 1 .375 .25 0.
    # θ 0.6 -> [3, 5): inside 0.9375, flanks (rows 2 and 5) 0.3125 -> 0.8 * 0.625 = 0.5.
    # θ 0.3 -> [3, 6): inside 0.75, flanks (rows 2 and 6) 0.25 -> 0.8 * 0.5 = 0.4.
    # Masks alone (mask_weight 1): [3, 5) at both θ, flanks 0 -> 0.8 * 1.
    T = 8
    curve = [0, 0, 0.4, 0.6, 0.8, 0.6, 0.4, 0]
    p = _probs(T, 1, {(t, 0): v for t, v in enumerate(curve)})
    m = np.zeros((T, T))
    m[3:5, 4] = 1.0
    cfg = DetectConfig(theta_c=0.3, thetas=(0.3, 0.6), max_candidates=1, mask_weight=0.5)
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), T, cfg)
    got = sorted(zip(segs.starts.tolist(), segs.ends.tolist(), segs.scores.tolist()))
    np.testing.assert_allclose(got, [(3.0, 5.0, 0.5), (3.0, 6.0, 0.4)])
    segs = segments_from_window(p, m, Timeline(0.0, 1.0, T), T, replace(cfg, mask_weight=1.0))
    np.testing.assert_allclose(list(zip(segs.starts, segs.ends, segs.scores)), [(3.0, 5.0, 0.8)])


def test_soft_nms_gaussian_decay_by_hand():
    # [0,10] (0.9) is kept; [0,5] (0.8) has tIoU 0.5 with it: 0.8 * exp(-0.25 / 0.5) = 0.4852.
    # Class 1's segment overlaps but is another class: untouched.
    segs = Segments(
        labels=np.array([0, 0, 1]),
        starts=np.array([0.0, 0.0, 0.0]),
        ends=np.array([10.0, 5.0, 10.0]),
        scores=np.array([0.9, 0.8, 0.7]),
    )
    out = soft_nms(segs, sigma=0.5, top_k=10, min_score=0.001)
    got = list(zip(out.labels.tolist(), out.ends.tolist(), out.scores.tolist()))
    np.testing.assert_allclose(got, [(0, 10.0, 0.9), (1, 10.0, 0.7), (0, 5.0, 0.8 * math.exp(-0.5))])
    # With a high floor the decayed segment is dropped; top_k caps each class.
    assert len(soft_nms(segs, 0.5, 10, min_score=0.5)) == 2
    assert len(soft_nms(segs, 0.5, top_k=1, min_score=0.001)) == 2


def test_finalize_merges_windows_clips_and_keeps_top_k():
    # Two overlapping windows find the same segment, [3 s, 5 s]: one copy survives, with the higher score.
    w1 = Segments(np.array([0]), np.array([3.0]), np.array([5.0]), np.array([0.6]))
    w2 = Segments(np.array([0]), np.array([3.0]), np.array([5.0]), np.array([0.7]))
    edge = Segments(
        np.array([1, 1, 1]), np.array([-1.0, 8.0, 11.0]), np.array([2.0, 12.0, 12.0]), np.array([0.5, 0.4, 0.9])
    )
    dets = finalize([w1, w2, edge], duration=10.0)
    # [-1,2] -> [0,2]; [8,12] -> [8,10]; [11,12] -> [10,10], zero length: dropped.
    np.testing.assert_allclose(dets, [(0, 3.0, 5.0, 0.7), (1, 0.0, 2.0, 0.5), (1, 8.0, 10.0, 0.4)])
    np.testing.assert_allclose(finalize([w1, w2, edge], duration=10.0, cfg=DetectConfig(top_k=2)), dets[:2])
    assert finalize([], duration=5.0) == []
    # How the windows are grouped into Segments does not matter.
    np.testing.assert_allclose(finalize([Segments.concat([w1, w2]), edge], duration=10.0), dets)


def test_long_video_pipeline_is_bounded():
    # 40 overlapping windows of 256 snippets, 20 classes, random outputs. What keeps the cost linear in the video's
    # length is checked by size (the time is measured by benchmarks/postprocess.py): a window yields at most one
    # segment per (candidate, θ), and Soft-NMS, whose cost is its input times top_k, sees only the video's
    # pre_nms_top_n best segments.
    rng = np.random.default_rng(0)
    T, K = 256, 20
    cfg = DetectConfig()
    parts = []
    for w in range(40):
        p = rng.dirichlet(np.full(K + 1, 0.3), size=T)
        m = rng.random((T, T))
        parts.append(segments_from_window(p, m, Timeline(w * 64.0, 0.5, T), T, cfg))
        assert 0 < len(parts[-1]) <= cfg.max_candidates * len(cfg.thetas)
    duration = 40 * 64.0 + 128.0
    dets = finalize(parts, duration=duration, cfg=cfg)
    assert len(dets) == cfg.top_k
    # With the cap below top_k the output is at most the cap: Soft-NMS only decays scores, so every detection is
    # one of the segments it was given.
    capped = finalize(parts, duration=duration, cfg=replace(cfg, pre_nms_top_n=50))
    assert 0 < len(capped) <= 50
    scores = [d[3] for d in dets]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert all(0.0 <= d[1] < d[2] <= 40 * 64.0 + 128.0 for d in dets)


# ---------------------------------------------------------------- segments longer than a window, window-edge fragments


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
