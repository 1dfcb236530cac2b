"""Segment extraction, Soft-NMS and per-video finalisation on hand-made windows with known answers."""

import math
from dataclasses import replace

import numpy as np
from stale_cli.postprocess import DetectConfig, Segments, finalize, segments_from_window, soft_nms
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
