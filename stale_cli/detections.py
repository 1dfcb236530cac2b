"""What detection gives for a video: its segments and per-class score curves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


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
    the seconds at the centre of each snippet, used by the plot and the HTML report (``stale_cli.report``).
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
