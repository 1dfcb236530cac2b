"""What a person reads: one video's ranked detections reduced to the ones worth reading.

The detector's list is made for mAP (:mod:`stale_cli.model.postprocess`): Soft-NMS only decays a segment that overlaps a
better one of its class, so the list keeps every overlapping alternative, down to a score of 0.001 and up to 200
per video, because a lower-ranked alternative can still match an instance the better one missed, and mAP never
punishes a low-scored guess. Read as a table, subtitles or a report, that list is a flood of near-copies. The
reduction, applied after detection to the same ranked list (so ``stale detect --all`` and the default differ only
here):

1. segments scoring below ``min_score`` are dropped;
2. within a class, best first, a segment whose tIoU with one already kept exceeds ``max_overlap`` is an
   *alternative* of it, not a detection of its own (Soft-NMS has already lowered its score; here it goes). The
   measure is tIoU, not the overlap of the shorter segment: a short segment inside a long one of its class is often
   one of several instances the long one runs together (THUMOS14's are dense: a median of 2.9 s, dozens per
   video), and suppressing it lost 8-10 points of the instances found on the training-free benchmark;
3. at most ``per_class`` segments of each class are kept.

The defaults were chosen on ``benchmarks/quality.py`` (a trained checkpoint) and ``benchmarks/zero_shot.py``
(the training-free mode), measured with ``benchmarks/reading.py``: see BENCHMARKS.md "What a person reads".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

BELOW_FLOOR = -1  # parent of a segment scoring under min_score
OVER_LIMIT = -2  # parent of a separate segment past the per-class limit


@dataclass(frozen=True)
class ReadingConfig:
    """How far a video's ranked detections are reduced for a person (``stale detect`` without ``--all``)."""

    min_score: float = 0.05  # the score floor: below it, segments are left out
    per_class: int = 50  # segments of one class kept per video, best first (THUMOS14 videos hold dozens)
    # tIoU with a kept segment of the same class above which a lower one is its alternative; 0.3, the low end
    # of the tIoUs detection is judged at: two segments that close describe one event.
    max_overlap: float = 0.3


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """tIoU of two segments: intersection over union (1: the same, 0: disjoint)."""
    inter = max(min(a_end, b_end) - max(a_start, b_start), 0.0)
    union = (a_end - a_start) + (b_end - b_start) - inter
    return inter / union if union > 0 else 0.0


def reading_parents(segments: Sequence, cfg: ReadingConfig = ReadingConfig()) -> list[int]:
    """For each of ``segments`` (objects with ``label``, ``start``, ``end``, ``score``; any order): its own index
    if it is kept, the index of the kept segment it is an alternative of, :data:`BELOW_FLOOR` or
    :data:`OVER_LIMIT`."""
    order = sorted(range(len(segments)), key=lambda i: -segments[i].score)
    parents = [BELOW_FLOOR] * len(segments)
    kept_of: dict[str, list[int]] = {}
    for i in order:
        s = segments[i]
        if not s.score >= cfg.min_score:
            continue
        kept = kept_of.setdefault(s.label, [])
        best, most = None, cfg.max_overlap
        for j in kept:
            o = overlap(s.start, s.end, segments[j].start, segments[j].end)
            if o > most:
                best, most = j, o
        if best is not None:
            parents[i] = best
        elif len(kept) < cfg.per_class:
            kept.append(i)
            parents[i] = i
        else:
            parents[i] = OVER_LIMIT
    return parents


def for_reading(segments: Sequence, cfg: ReadingConfig = ReadingConfig()) -> list:
    """The segments kept for a person, in their given order."""
    parents = reading_parents(segments, cfg)
    return [s for i, s in enumerate(segments) if parents[i] == i]
