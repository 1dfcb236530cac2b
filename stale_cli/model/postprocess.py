"""From per-window class probabilities and masks to scored segments in seconds (paper §3.3 "Model inference").

Letters: T snippets in a window, V valid snippets (V <= T), K classes (+1 background, last column), N candidates,
S segments.

Per window (:func:`segments_from_window`):

1. **Candidates.** Every (snippet, class) pair whose foreground probability exceeds ``theta_c`` is a candidate,
   ranked by that probability, at most ``max_candidates`` per window. A snippet may be a candidate of more than one
   class: when two classes are close the lower-ranked one still gets a (lower-scored) segment, which mAP rewards.
2. **Masks.** The class curve of candidate (``t``, ``k``) is class k's probability curve divided by its value at
   ``t`` (clipped to 1), so a threshold θ means "θ of the candidate's own confidence" whatever the scale of the
   probabilities. In the training-free mode (``masks=None``) that curve is the mask. With a mask prediction ``M``
   (Eq. 8) the mask is ``mask_weight`` x column ``t`` of ``M`` + (1 - ``mask_weight``) x the class curve: our
   departure from the paper (``mask_weight`` = 1), since the two heads err differently (on
   ``benchmarks/quality.py``, 12 seeds: 83.9 avg mAP on average with 0.5, 82.1 with the masks alone, 79.6 with
   the curves alone).
3. **Segments.** The mask is thresholded at every θ in ``thetas`` (``mask > θ``); the candidate snippet itself
   counts as foreground (the classifier says so), so the segment is the maximal run that contains it, or joins the
   runs that touch it. A θ at which the candidate's own mask value and both neighbours' are below θ gives no
   segment. Identical segments from different θ are kept once.
4. **Score** = class probability at the candidate × the mask's outer-inner contrast: mean mask
   inside the segment minus mean mask over its flanks, a quarter of its length (at least one snippet) on each side
   within the valid snippets, clipped at 0 (the outer-inner contrast of AutoLoc, Shou et al. ECCV 2018). The
   paper's "max-mask score" is ~1 for every θ and ranks nothing; the plain mean inside ranks a fragment cut out of
   an instance at a high θ above the whole instance, since the fragment holds only the mask's peak. The contrast
   gives that fragment a low score (its flanks are inside the instance, as high as itself) and the segment whose
   edges lie where the mask falls a high one. Measured on ``benchmarks/quality.py``: one checkpoint scores 49
   avg mAP with the mean inside (and Θ from 0.1), 77 with this score (BENCHMARKS.md "Quality").
5. **Seconds** through the window's :class:`~stale_cli.timeline.Timeline` only: a run of snippets ``[a, b)`` is
   ``[to_seconds(a), to_seconds(b)]`` (edges).

A video of several overlapping windows (:class:`WindowedVideo`, the trained mode): a segment ending on an
internal window edge is a fragment, demoted (``fragment_weight``); fragments of one class are chained across
window edges into segments longer than a window, scored from the whole-video class curve. The training-free mode
(:func:`segments_from_curve`) runs the steps above on the whole video's curves at once, candidates at the curves'
local peaks, with no window and so no cap on a segment's length.

Per video (:func:`finalize`): the segments of all windows are pooled, clipped to ``[0, duration]``, zero-length
ones dropped, duplicates kept once, the ``pre_nms_top_n`` best kept, then Gaussian Soft-NMS (Bodla et al. 2017)
per class with the standard tIoU, and finally the ``top_k`` best of the video.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from stale_cli.timeline import Timeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectConfig:
    """Inference thresholds (the paper gives none of these values; ours are in the range TAD heads commonly use)."""

    theta_c: float = 0.1  # θ_c: a (snippet, class) is a candidate when its probability exceeds this
    # Θ: mask thresholds. From 0.5 up: a mask (trained with BCE, Eq. 10) puts a row in the instance when it
    # exceeds 0.5, and in the training-free mode 0.5 is half the candidate's own confidence (the half-height edge
    # of its curve); lower thresholds only add rows the mask calls outside, and with the contrast score below
    # they drew segments out by a row past the edge. The higher ones split instances that a mask merges.
    thetas: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    # Weight of the mask head's column in a candidate's mask; the rest is the class's own probability curve relative
    # to the candidate (what the training-free mode uses alone). 1 is the paper's inference (masks alone).
    mask_weight: float = 0.5
    # STALE mode: share of frozen CLIP's posterior over the names (from the raw snippet features, as in the
    # training-free mode) in the class posterior, a weighted geometric mean with the classifier's (Eq. 7);
    # model.stale.detection_probabilities. 0 is the classifier alone.
    prior_weight: float = 0.5
    # STALE mode, --new-names both: frozen CLIP's curve of a name the checkpoint was not trained on is multiplied by
    # min(1, L_ctx / level) ** context_gate (the context foreground relative to its level on the training
    # foreground, model/context.py) before the noisy-OR with the model's reading, so that frozen CLIP's evidence
    # counts less where nothing departs from the scene. 0 turns it off. Chosen with L_ctx itself, before the level
    # was recorded: frozen CLIP's curve alone weighed by L_ctx ** g (benchmarks/zero_shot_gate.py, default world,
    # 6 splits) gives 70.8 / 72.7 / 75.3 / 75.7 / 75.1 / 69.4 avg mAP on unseen names at g = 0 / 0.1 / 0.2 / 0.3 /
    # 0.5 / 1 (BENCHMARKS.md "Zero-shot").
    context_gate: float = 0.3
    max_candidates: int = 100  # candidates per window, best first
    nms_sigma: float = 0.5  # Gaussian Soft-NMS: score *= exp(-tIoU^2 / sigma)
    pre_nms_top_n: int = 2000  # segments per video entering Soft-NMS (keeps it O(top_n * top_k))
    top_k: int = 200  # segments per video in the output (THUMOS14 convention; ActivityNet uses 100)
    min_score: float = 0.001  # segments scoring below this (after Soft-NMS decay) are dropped
    # A video cut into overlapping windows (WindowedVideo): a segment that ends on an internal window edge is a
    # fragment of a run the window cannot see whole; its score is multiplied by this (0 drops it). Windows overlap
    # by half, so an instance shorter than half a window is whole in some window, and a longer one is rebuilt by
    # joining fragments; a fragment kept at full score would rank like a whole instance (its cut side has no
    # outer flank). 0.1 rather than 0: a long run whose fragments fail to chain keeps some evidence (on
    # benchmarks/quality.py's attainable detector, seeds 0-2: 91.0 / 91.1 / 91.2 avg mAP with 0.1, 91.0 / 91.1 /
    # 90.8 with 0, 89.6 / 88.7 / 90.3 keeping fragments at full score without joining; BENCHMARKS.md "Long segments").
    fragment_weight: float = 0.1


@dataclass(frozen=True)
class Segments:
    """Scored segments as parallel arrays, all of length S."""

    labels: np.ndarray  # (S,) int64 class index in [0, K)
    starts: np.ndarray  # (S,) float64 seconds
    ends: np.ndarray  # (S,) float64 seconds
    scores: np.ndarray  # (S,) float64 in [0, 1]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx) -> "Segments":
        return Segments(self.labels[idx], self.starts[idx], self.ends[idx], self.scores[idx])

    @staticmethod
    def empty() -> "Segments":
        return Segments(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: Sequence["Segments"]) -> "Segments":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Segments.empty()
        return Segments(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("labels", "starts", "ends", "scores")))


def _runs_around(fg: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of True containing row ``at[c]`` of each column of ``fg``.

    ``fg``: (R, V, N) bool with ``fg[r, at[n], n]`` True; ``at``: (N,) -> (start, end) each (R, N), end exclusive.
    """
    R, V, N = fg.shape
    pos = np.arange(V)[None, :, None]  # (1, V, 1)
    last_bg = np.maximum.accumulate(np.where(fg, -1, pos), axis=1)  # (R, V, N): last background row <= v
    next_bg = np.minimum.accumulate(np.where(fg, V, pos)[:, ::-1], axis=1)[:, ::-1]  # first background row >= v
    cols = np.arange(N)
    start = last_bg[:, at, cols] + 1  # (R, N)
    end = next_bg[:, at, cols]  # (R, N)
    return start, end


def segments_from_window(
    probs: np.ndarray,
    masks: Optional[np.ndarray],
    timeline: Timeline,
    valid_len: int,
    cfg: DetectConfig = DetectConfig(),
) -> Segments:
    """Scored candidate segments of one window, in seconds.

    ``probs``: (T, K+1) softmax probabilities, background last; ``masks``: (T, T) with ``masks[i, t]`` the
    foreground probability of snippet i in the mask predicted by snippet t, or None for the training-free mode;
    ``timeline``: the window's snippets in seconds; ``valid_len``: V, the real snippets (the rest is padding).
    The window is taken alone: a segment cut by its edges is kept as it is (see :class:`WindowedVideo` for a video
    cut into several windows).
    """
    assert int(valid_len) <= timeline.num, (valid_len, timeline.num)
    labels, start, end, score = _window_runs(probs, masks, valid_len, cfg)
    return Segments(
        labels=labels,
        starts=np.asarray(timeline.to_seconds(start), dtype=np.float64),
        ends=np.asarray(timeline.to_seconds(end), dtype=np.float64),
        scores=score,
    )


def _window_runs(
    probs: np.ndarray, masks: Optional[np.ndarray], valid_len: int, cfg: DetectConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-4 of the module docstring on one window: (labels, start, end, score), each (S,), with ``[start, end)``
    in snippets of the window (int64, end exclusive) and scores float64; arguments as :func:`segments_from_window`."""
    V = int(valid_len)
    assert 0 < V <= probs.shape[0], (V, probs.shape)
    fg_probs = np.asarray(probs, dtype=np.float64)[:V, :-1]  # (V, K)
    t_idx, k_idx = np.nonzero(fg_probs > cfg.theta_c)  # (N,), (N,)
    if t_idx.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cls_score = fg_probs[t_idx, k_idx]  # (N,)
    best = np.argsort(-cls_score, kind="stable")[: cfg.max_candidates]
    t_idx, k_idx, cls_score = t_idx[best], k_idx[best], cls_score[best]
    N = t_idx.size

    curves = np.minimum(fg_probs[:, k_idx] / cls_score[None, :], 1.0)  # (V, N): relative to the candidate
    if masks is None:  # training-free: the class's own curve
        cand_masks = curves
    else:  # column t of M per candidate, blended with the class curve
        w = cfg.mask_weight
        cand_masks = w * np.asarray(masks, dtype=np.float64)[:V, t_idx] + (1 - w) * curves  # (V, N)

    thetas = np.asarray(cfg.thetas, dtype=np.float64)  # (R,)
    fg = cand_masks[None, :, :] > thetas[:, None, None]  # (R, V, N)
    fg[:, t_idx, np.arange(N)] = True  # the candidate snippet itself is foreground
    start, end = _runs_around(fg, t_idx)  # (R, N) each, snippet edges

    # Mean mask values over runs of snippets from a cumulative sum along time.
    csum = np.concatenate([np.zeros((1, N)), np.cumsum(cand_masks, axis=0)], axis=0)  # (V+1, N)
    cols = np.broadcast_to(np.arange(N), start.shape)  # (R, N)
    length = end - start  # (R, N), >= 1
    inner = (csum[end, cols] - csum[start, cols]) / length  # mean mask inside: (R, N)
    flank = np.maximum(1, length // 4)  # (R, N)
    lo, hi = np.maximum(start - flank, 0), np.minimum(end + flank, V)  # flanks [lo, start) and [end, hi)
    n_out = (start - lo) + (hi - end)  # (R, N); 0 when the segment fills the window
    out_sum = csum[start, cols] - csum[lo, cols] + csum[hi, cols] - csum[end, cols]
    outer = np.divide(out_sum, n_out, out=np.zeros_like(out_sum), where=n_out > 0)  # (R, N)
    score = np.clip(cls_score[None, :] * (inner - outer), 0.0, 1.0)  # (R, N)

    # A θ at which no run contains or touches the candidate (its own mask value is below θ and so are both
    # neighbours') gives no segment: a lone forced snippet is not a mask's answer.
    own = cand_masks[t_idx, np.arange(N)]  # (N,)
    keep = ((own[None, :] > thetas[:, None]) | (end - start > 1)).ravel()  # (R*N,)
    labels = np.broadcast_to(k_idx, start.shape).ravel()[keep]  # (S,)
    start, end, score = start.ravel()[keep], end.ravel()[keep], score.ravel()[keep]
    # Keep each (class, start, end) once, with its best score.
    key = np.stack([labels, start, end], axis=1)  # (R*N, 3)
    order = np.lexsort((-score, end, start, labels))
    key, score = key[order], score[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = np.any(key[1:] != key[:-1], axis=1)
    key, score = key[first], score[first]
    key = key.astype(np.int64)
    return key[:, 0], key[:, 1], key[:, 2], score.astype(np.float64)


def _contrast(curve: np.ndarray, start: np.ndarray, end: np.ndarray, level: float) -> np.ndarray:
    """Step 4's score of runs of one class curve, with the candidate's probability ``level`` as the reference.

    ``curve``: (N,) probabilities of one class over the video's snippets; ``start``, ``end``: (R,) int runs
    ``[start, end)`` in snippets; ``level``: the candidate's probability p. Returns (R,) float64: the score of
    step 4 with the curve relative to p (clipped at 1) as the mask, ``p * (inner - outer)``, which is
    ``mean(min(curve, p))`` inside minus the same over the flanks (a quarter of the run, at least one snippet, each
    side within ``[0, N)``), clipped to [0, 1]. Only the stretch the widest run and its flanks span is read.
    """
    N = curve.shape[0]
    flank = np.maximum(1, (end - start) // 4)  # (R,)
    lo, hi = np.maximum(start - flank, 0), np.minimum(end + flank, N)  # flanks [lo, start) and [end, hi)
    a, b = int(lo.min()), int(hi.max())
    csum = np.concatenate([[0.0], np.cumsum(np.minimum(curve[a:b], level))])  # (b - a + 1,)
    lo, start, end, hi = lo - a, start - a, end - a, hi - a
    inner = (csum[end] - csum[start]) / (end - start)
    n_out = (start - lo) + (hi - end)
    out_sum = csum[start] - csum[lo] + csum[hi] - csum[end]
    outer = np.divide(out_sum, n_out, out=np.zeros_like(out_sum), where=n_out > 0)
    return np.clip(inner - outer, 0.0, 1.0)


def _min_table(curve: np.ndarray) -> list[np.ndarray]:
    """Sparse table of range minima of a (N,) curve: entry j is (N - 2**j + 1,) with ``[j][i] = min(curve[i:i +
    2**j])``, for every 2**j <= N (N log N floats in all)."""
    table = [np.asarray(curve, dtype=np.float64)]
    w = 1
    while 2 * w <= curve.shape[0]:
        prev = table[-1]
        table.append(np.minimum(prev[:-w], prev[w:]))
        w *= 2
    return table


def _runs_above(table: list[np.ndarray], at: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run ``[start, end)`` around snippet ``at[i]`` (which counts as inside whatever its value) of snippets
    whose curve value exceeds ``level[i]``: ``at``, ``level`` (Q,) -> start, end (Q,) int64.

    The same runs as :func:`_runs_around` on ``curve > level``, found by binary lifting on the range-minimum
    ``table`` of :func:`_min_table`: O(Q log N) time, no (N, Q) array.
    """
    N = table[0].shape[0]
    start = np.asarray(at, dtype=np.int64).copy()  # the run is [start, at]: extend left while the minimum > level
    end = start + 1  # [at, end): extend right likewise
    for j in range(len(table) - 1, -1, -1):
        w = 1 << j
        step = table[j]
        ok = start - w >= 0
        ok &= step[np.where(ok, start - w, 0)] > level  # min(curve[start - w : start]) > level
        start = np.where(ok, start - w, start)
        ok = end + w <= N
        ok &= step[np.where(ok, end, 0)] > level  # min(curve[end : end + w]) > level
        end = np.where(ok, end + w, end)
    return start, end


def _keep_best(labels: np.ndarray, start: np.ndarray, end: np.ndarray, score: np.ndarray):
    """Each (label, start, end) once, with its best score: four (S,) arrays -> four (S',) arrays."""
    order = np.lexsort((-score, end, start, labels))
    labels, start, end, score = labels[order], start[order], end[order], score[order]
    first = np.ones(len(labels), dtype=bool)
    first[1:] = (labels[1:] != labels[:-1]) | (start[1:] != start[:-1]) | (end[1:] != end[:-1])
    return labels[first], start[first], end[first], score[first]


def segments_from_curve(probs: np.ndarray, timeline: Timeline, cfg: DetectConfig = DetectConfig(),
                        block: int = 256) -> Segments:
    """Training-free segments from a whole video's class curves, with no window and so no cap on their length.

    ``probs``: (N, K+1) probabilities of the video's N snippets, background last; ``timeline``: those snippets in
    seconds (``timeline.num`` >= N); ``block``: snippets per stretch of video over which ``cfg.max_candidates``
    applies (the windows of the former windowed path). The steps of :func:`segments_from_window` with
    ``masks=None``, changed only where a whole video would cost too much:

    - candidates are the local peaks of each class curve above ``theta_c`` (a value above its left neighbour and
      not below its right one), the ``max_candidates`` best of each block of ``block`` snippets. Another snippet of
      the same rise only repeats a peak's runs at other thresholds (its run at any θ holds the peak);
    - the run of candidate (t, k) at θ is the run of ``curve_k > θ * p`` around t (the relative curve
      ``min(curve_k / p, 1) > θ``), found by binary lifting (:func:`_runs_above`), and scored by the same
      outer-inner contrast (:func:`_contrast`) over the whole video: no (N, candidates) array is made.

    Memory is O(N log N) floats for one class at a time, time O(candidates x (log N + run length)).
    """
    fg = np.asarray(probs)[:, :-1]  # (N, K) view
    N, K = fg.shape
    assert N <= timeline.num, (N, timeline.num)
    if N == 0:
        return Segments.empty()
    thetas = np.asarray(cfg.thetas, dtype=np.float64)  # (R,)
    # Candidates: local peaks above θ_c, per class.
    t_all, k_all, p_all = [], [], []
    for k in range(K):
        c = np.asarray(fg[:, k], dtype=np.float64)
        left = np.concatenate([[-np.inf], c[:-1]])
        right = np.concatenate([c[1:], [-np.inf]])
        t = np.flatnonzero((c > cfg.theta_c) & (c > left) & (c >= right))
        t_all.append(t)
        k_all.append(np.full(t.size, k, np.int64))
        p_all.append(c[t])
    t_idx, k_idx, cls_score = np.concatenate(t_all), np.concatenate(k_all), np.concatenate(p_all)
    if t_idx.size == 0:
        return Segments.empty()
    # The best max_candidates of each block of snippets.
    blk = t_idx // max(1, int(block))
    order = np.lexsort((-cls_score, blk))
    blk_sorted = blk[order]
    first_of_blk = np.searchsorted(blk_sorted, blk_sorted, side="left")
    keep = order[np.arange(order.size) - first_of_blk < cfg.max_candidates]
    t_idx, k_idx, cls_score = t_idx[keep], k_idx[keep], cls_score[keep]

    labels, starts, ends, scores = [], [], [], []
    R = thetas.size
    for k in np.unique(k_idx):
        sel = np.flatnonzero(k_idx == k)
        c = np.asarray(fg[:, k], dtype=np.float64)
        table = _min_table(c)
        t = np.repeat(t_idx[sel], R)  # (n * R,): candidate-major, θ-minor
        p = np.repeat(cls_score[sel], R)
        start, end = _runs_above(table, t, np.tile(thetas, sel.size) * p)
        # A θ at which the candidate's own relative value and both neighbours' are below θ gives no segment.
        own = np.minimum(c[t] / p, 1.0)
        ok = (own > np.tile(thetas, sel.size)) | (end - start > 1)
        score = np.zeros(t.size)
        for i in range(sel.size):  # one candidate at a time, its R runs together
            r = slice(i * R, (i + 1) * R)
            score[r] = _contrast(c, start[r], end[r], p[i * R])
        labels.append(np.full(int(ok.sum()), k, np.int64))
        starts.append(start[ok])
        ends.append(end[ok])
        scores.append(score[ok])
    labels, start, end, score = _keep_best(*(np.concatenate(x) for x in (labels, starts, ends, scores)))
    return Segments(labels, np.asarray(timeline.to_seconds(start), dtype=np.float64),
                    np.asarray(timeline.to_seconds(end), dtype=np.float64), score)


class WindowedVideo:
    """A video's segments from overlapping windows, with runs longer than a window joined across window edges.

    All windows lie on one grid of ``num_rows`` snippets (window mode: the feature rows; resize mode: the video's
    resized snippets, :func:`stale_cli.model.data.windows.detection_grid`); window j covers grid snippets
    ``[start_row_j, start_row_j + valid_len_j)``. :meth:`add` takes one window's outputs (the windows of a video
    in any order), :meth:`segments` gives the video's segments:

    - a segment that ends on an *internal* window edge (an edge that is not the video's start or end) is a
      **fragment**: the window saw only part of the run, and its contrast score has no outer flank on the cut
      side, so it would rank like a whole instance. Its score is multiplied by ``cfg.fragment_weight`` (0 drops
      it). Windows overlap by half, so an instance shorter than half a window is whole in some other window.
    - fragments of one class are **joined** across windows: a fragment cut at its window's end joins a later
      fragment cut at its own window's start when the second starts inside the first or where it ends, and runs
      on past it; chains of such joins go through windows that the run fills entirely, so a 150 s action comes
      out as one segment ``[start of the first piece, end of the last]``.
    - a joined segment is **scored from the whole-video class curve**: the windows' probabilities averaged per grid
      snippet, scored as the training-free mode scores a segment (:func:`_contrast` relative to the curve's peak
      inside it, flanks a quarter of its length on both sides in the whole video). The pieces' own scores cannot be
      used: each lacks a flank, and the mask columns they come from belong to different windows. The class curve
      is the one per-snippet evidence that exists over the whole video, and its contrast ranks the joined
      segment whose edges lie where the curve falls above one that stops short or runs past them.
    """

    def __init__(self, num_rows: int, cfg: DetectConfig = DetectConfig()):
        self.N = int(num_rows)
        self.cfg = cfg
        self.grid: Optional[Timeline] = None  # the grid's timeline, from the first window
        self.curve_sum: Optional[np.ndarray] = None  # (N, K) sum of window probabilities per grid snippet
        self.curve_cnt = np.zeros(self.N)  # (N,) windows that saw each snippet
        self.parts: list[tuple[np.ndarray, ...]] = []  # per window: labels, start, end, score (grid), window edges

    def add(self, probs: np.ndarray, masks: Optional[np.ndarray], timeline: Timeline, start_row: int,
            valid_len: int) -> None:
        """One window: ``probs`` (T, K+1), ``masks`` (T, T) or None (class curves as masks), ``timeline`` its T
        snippets in seconds, ``start_row`` its first snippet on the video's grid, ``valid_len`` its real snippets."""
        V, w = int(valid_len), int(start_row)
        assert 0 <= w and w + V <= self.N, (w, V, self.N)
        grid = Timeline(timeline.origin - w * timeline.step, timeline.step, self.N)
        if self.grid is None:
            self.grid = grid
        else:
            assert np.isclose(grid.step, self.grid.step) and np.isclose(grid.origin, self.grid.origin,
                                                                         atol=1e-6 * max(1.0, abs(grid.origin))), \
                "windows of one video must lie on one grid"
        probs = np.asarray(probs, dtype=np.float64)
        if self.curve_sum is None:
            self.curve_sum = np.zeros((self.N, probs.shape[1] - 1))
        self.curve_sum[w : w + V] += probs[:V, :-1]
        self.curve_cnt[w : w + V] += 1.0
        labels, start, end, score = _window_runs(probs, masks, V, self.cfg)
        self.parts.append((labels, start + w, end + w, score, np.full(labels.size, w), np.full(labels.size, w + V)))

    def curve(self) -> np.ndarray:
        """(N, K) the windows' class probabilities averaged per grid snippet (0 where no window reached)."""
        return self.curve_sum / np.maximum(self.curve_cnt, 1.0)[:, None]

    def segments(self) -> Segments:
        """The video's segments in seconds: whole ones, fragments weighted by ``fragment_weight``, joined ones."""
        if not self.parts:
            return Segments.empty()
        labels, start, end, score, w0, w1 = (np.concatenate(x) for x in zip(*self.parts))
        cut_lo = (start == w0) & (w0 > 0)  # starts on an internal window edge
        cut_hi = (end == w1) & (w1 < self.N)  # ends on an internal window edge
        frag = cut_lo | cut_hi
        j_labels, j_start, j_end = _join_fragments(labels[frag], start[frag], end[frag], cut_lo[frag], cut_hi[frag])
        curves = self.curve()
        j_score = np.zeros(j_labels.size)
        for i, (k, s, e) in enumerate(zip(j_labels, j_start, j_end)):
            c = curves[:, k]
            peak = float(c[s:e].max())
            if peak > 0:
                j_score[i] = _contrast(c, np.array([s]), np.array([e]), peak)[0]
        score = np.where(frag, score * self.cfg.fragment_weight, score)
        keep = score > 0
        labels, start, end, score = _keep_best(
            np.concatenate([labels[keep], j_labels]), np.concatenate([start[keep], j_start]),
            np.concatenate([end[keep], j_end]), np.concatenate([score[keep], j_score]))
        return Segments(labels, np.asarray(self.grid.to_seconds(start), dtype=np.float64),
                        np.asarray(self.grid.to_seconds(end), dtype=np.float64), score)


def _join_fragments(labels, start, end, cut_lo, cut_hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chains of fragments across window edges -> joined segments (labels, start, end), each (J,) int64.

    Inputs (F,) over fragments on the video's grid: class, ``[start, end)``, and whether each starts / ends on an
    internal window edge. Fragment f leads to g (same class) when f is cut at its end, g at its start, and
    ``start_f <= start_g <= end_f < end_g``: g begins inside f (or where f ends) and runs past it. A chain goes
    from a *first piece* (cut at its end only) through *middle pieces* (cut at both ends: the run fills their
    window) to a *last piece* (cut at its start only), and gives ``[start of the first, end of the last)``. Only
    fragments of overlapping or touching windows can lead to each other, so the chains found are few; each
    (start, end) is given once.
    """
    out = set()
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        heads = idx[cut_hi[idx]]  # may lead somewhere
        tails = idx[cut_lo[idx]]  # may be led to
        if heads.size == 0 or tails.size == 0:
            continue
        reach: dict[int, set] = {}  # tail -> starts of the first pieces that chain to it
        for g in tails[np.argsort(end[tails], kind="stable")]:  # a predecessor ends before g: done first
            f = heads[(start[heads] <= start[g]) & (start[g] <= end[heads]) & (end[heads] < end[g])]
            starts = set(start[f[~cut_lo[f]]].tolist())  # first pieces
            for m in f[cut_lo[f]]:  # middle pieces
                starts |= reach.get(int(m), set())
            reach[int(g)] = starts
            if not cut_hi[g]:  # a last piece
                out.update((int(k), s, int(end[g])) for s in starts)
    if not out:
        z = np.zeros(0, np.int64)
        return z, z, z
    arr = np.array(sorted(out), dtype=np.int64)  # (J, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def segment_tiou(start: float, end: float, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Standard tIoU of ``[start, end]`` with each of ``(starts, ends)``: (S,) -> (S,); 0 where the union is 0."""
    inter = np.clip(np.minimum(end, ends) - np.maximum(start, starts), 0.0, None)
    union = (end - start) + (ends - starts) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def soft_nms(segs: Segments, sigma: float, top_k: int, min_score: float) -> Segments:
    """Gaussian Soft-NMS within each class (Bodla et al. 2017).

    Repeatedly keep the best remaining segment and decay every other segment of its class by
    ``exp(-tIoU^2 / sigma)``; segments that fall below ``min_score`` are dropped; at most ``top_k`` kept per class.
    Returns the kept segments with their decayed scores, best first.
    """
    kept = []
    for k in np.unique(segs.labels):
        idx = np.flatnonzero(segs.labels == k)
        starts, ends = segs.starts[idx], segs.ends[idx]
        scores = segs.scores[idx].copy()
        alive = scores >= min_score
        picked, picked_scores = [], []
        while alive.any() and len(picked) < top_k:
            i = int(np.argmax(np.where(alive, scores, -np.inf)))
            picked.append(idx[i])
            picked_scores.append(scores[i])
            alive[i] = False
            iou = segment_tiou(starts[i], ends[i], starts, ends)
            scores = np.where(alive, scores * np.exp(-(iou**2) / sigma), scores)
            alive &= scores >= min_score
        if picked:
            s = segs.take(np.asarray(picked))
            kept.append(replace(s, scores=np.asarray(picked_scores, dtype=np.float64)))
    out = Segments.concat(kept)
    return out.take(np.argsort(-out.scores, kind="stable"))


def finalize(
    segments: Segments | Sequence[Segments],
    duration: Optional[float],
    cfg: DetectConfig = DetectConfig(),
) -> list[tuple[int, float, float, float]]:
    """All windows' segments of one video -> its detections ``[(label_index, start_s, end_s, score)]``, best first.

    Windows are merged, segments clipped to ``[0, duration]`` (``duration=None``: only at 0), zero-length ones
    dropped, duplicates kept once, then Soft-NMS per class and the ``top_k`` best of the video.
    """
    segs = Segments.concat(segments) if not isinstance(segments, Segments) else segments
    if not len(segs):
        return []
    hi = np.inf if duration is None else float(duration)
    starts = np.clip(segs.starts, 0.0, hi)
    ends = np.clip(segs.ends, 0.0, hi)
    segs = Segments(segs.labels, starts, ends, segs.scores)
    segs = segs.take(np.flatnonzero((ends > starts) & (segs.scores >= cfg.min_score)))
    if not len(segs):
        return []
    # Overlapping windows yield the same segment more than once: keep the best of each (class, start, end).
    order = np.lexsort((-segs.scores, segs.ends, segs.starts, segs.labels))
    segs = segs.take(order)
    first = np.ones(len(segs), dtype=bool)
    first[1:] = (
        (segs.labels[1:] != segs.labels[:-1]) | (segs.starts[1:] != segs.starts[:-1]) | (segs.ends[1:] != segs.ends[:-1])
    )
    segs = segs.take(np.flatnonzero(first))
    segs = segs.take(np.argsort(-segs.scores, kind="stable")[: cfg.pre_nms_top_n])
    segs = soft_nms(segs, cfg.nms_sigma, cfg.top_k, cfg.min_score)
    segs = segs.take(np.arange(min(len(segs), cfg.top_k)))
    return [
        (int(k), float(s), float(e), float(c))
        for k, s, e, c in zip(segs.labels, segs.starts, segs.ends, segs.scores)
    ]
