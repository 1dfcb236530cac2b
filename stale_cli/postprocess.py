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
    max_candidates: int = 100  # candidates per window, best first
    nms_sigma: float = 0.5  # Gaussian Soft-NMS: score *= exp(-tIoU^2 / sigma)
    pre_nms_top_n: int = 2000  # segments per video entering Soft-NMS (keeps it O(top_n * top_k))
    top_k: int = 200  # segments per video in the output (THUMOS14 convention; ActivityNet uses 100)
    min_score: float = 0.001  # segments scoring below this (after Soft-NMS decay) are dropped


# Dataset presets, same names as the training presets.
DETECT_PRESETS = {
    "thumos14": DetectConfig(),
    "activitynet": DetectConfig(top_k=100, nms_sigma=0.75),
}


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
    """
    V = int(valid_len)
    assert 0 < V <= probs.shape[0] and V <= timeline.num, (V, probs.shape, timeline.num)
    fg_probs = np.asarray(probs, dtype=np.float64)[:V, :-1]  # (V, K)
    t_idx, k_idx = np.nonzero(fg_probs > cfg.theta_c)  # (N,), (N,)
    if t_idx.size == 0:
        return Segments.empty()
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
    return Segments(
        labels=key[:, 0].astype(np.int64),
        starts=np.asarray(timeline.to_seconds(key[:, 1]), dtype=np.float64),
        ends=np.asarray(timeline.to_seconds(key[:, 2]), dtype=np.float64),
        scores=score.astype(np.float64),
    )


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
