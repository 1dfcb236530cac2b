"""What detection gives for a video: its segments and per-class score curves (and those curves at one byte per
value, as the HTML report and the resume journal store them)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

CURVE_LEVELS = 255  # a probability is sent as round(p * 255), one byte


@dataclass(frozen=True)
class Segment:
    label: str
    start: float  # seconds
    end: float  # seconds
    score: float  # in [0, 1]
    class_index: int  # row of ``label`` in its VideoDetections.classes (and column of its scores)


@dataclass
class VideoDetections:
    """Everything detection knows about one input video.

    ``classes`` are the K names asked for: each segment's ``class_index`` is its row there, and ``scores`` (T, K)
    has one column per class: the per-snippet class probabilities (background column dropped) at ``times`` (T,),
    the seconds at the centre of each snippet, used by the plot and the HTML report (``stale_cli.report.report``).
    """

    video_id: str
    source: str
    duration: float  # seconds
    segments: list[Segment]
    times: Optional[np.ndarray] = None  # (T,) seconds
    scores: Optional[np.ndarray] = None  # (T, K)
    extra: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        self.classes = tuple(self.classes)
        for s in self.segments:
            if not (0 <= s.class_index < len(self.classes) and self.classes[s.class_index] == s.label):
                raise ValueError(f"segment {s.label!r} (class {s.class_index}) is not one of {self.classes}")
        if self.scores is not None and np.shape(self.scores)[-1] != len(self.classes):
            raise ValueError(f"scores of shape {np.shape(self.scores)} for {len(self.classes)} classes")


def curve_payload(times: Optional[np.ndarray], scores: Optional[np.ndarray], num_classes: int) -> Optional[dict]:
    """Per-class score curves for the page: ``{"t0", "step"}`` (uniform rows) or ``{"times"}`` (seconds), and
    ``"values"``: per class, base64 of one byte per row (probability x 255)."""
    if times is None or scores is None or len(times) == 0:
        return None
    times = np.asarray(times, np.float64)  # (T,) seconds
    scores = np.asarray(scores, np.float64)  # (T, K)
    assert scores.shape == (times.shape[0], num_classes), (scores.shape, times.shape, num_classes)
    levels = np.clip(np.rint(np.nan_to_num(scores) * CURVE_LEVELS), 0, CURVE_LEVELS).astype(np.uint8)  # (T, K)
    out: dict = {"values": [base64.b64encode(levels[:, k].tobytes()).decode("ascii") for k in range(num_classes)]}
    steps = np.diff(times)
    if len(times) >= 2 and steps[0] > 0 and np.allclose(steps, steps[0], rtol=0, atol=1e-4):
        out.update(t0=round(float(times[0]), 6), step=float(steps[0]))
    else:
        out.update(times=[round(float(t), 4) for t in times])
    return out


def curves_from_payload(payload: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`curve_payload`: ``(times (T,), scores (T, K))``, the scores at its one-byte precision.
    Raises ValueError (or KeyError, TypeError) for a payload that is not one."""
    levels = [np.frombuffer(base64.b64decode(v, validate=True), np.uint8) for v in payload["values"]]
    if not levels or any(len(v) != len(levels[0]) for v in levels):
        raise ValueError("curves of different lengths")
    T = len(levels[0])
    if "times" in payload:
        times = np.asarray(payload["times"], np.float64)
    else:
        times = float(payload["t0"]) + float(payload["step"]) * np.arange(T)
    if times.shape != (T,) or not np.all(np.isfinite(times)):
        raise ValueError("times do not fit the curves")
    return times, np.stack(levels, axis=1).astype(np.float64) / CURVE_LEVELS  # (T,), (T, K)
