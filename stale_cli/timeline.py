"""Seconds <-> snippet indices: the one place each way.

A feature sequence, a sliding window of it, or a whole video resized to T snippets is a run of equal-length
snippets. Snippet ``i`` covers ``[origin + i * step, origin + (i + 1) * step)`` seconds; its centre is
``origin + (i + 0.5) * step``. For features written by ``extract-features`` row ``k`` is the frame shown *at*
``timestamps[k] = timestamps[0] + k / fps``: the snippet it stands for is centred there, so ``step = 1 / fps`` and
``origin = timestamps[0] - step / 2`` (a run of rows ``[a, b)`` is ``[timestamps[a] - step / 2, timestamps[b - 1]
+ step / 2]``, not half a row late); a window starting at row ``w`` has ``origin = timestamps[w] - step / 2``; a
whole video resized to T snippets has ``origin = 0`` and ``step = duration / T``.

Everything a user sees is in seconds; everything inside the model is in snippet indices. Convert only with
:meth:`Timeline.to_index` and :meth:`Timeline.to_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timeline:
    origin: float  # seconds at the start edge of snippet 0
    step: float  # seconds per snippet
    num: int  # number of snippets

    def to_index(self, seconds):
        """Seconds -> continuous snippet coordinate (edges: snippet i spans [i, i + 1))."""
        return (np.asarray(seconds, dtype=np.float64) - self.origin) / self.step

    def to_seconds(self, index):
        """Continuous snippet coordinate (edges) -> seconds. ``to_seconds(i)`` is the start of snippet i."""
        return self.origin + np.asarray(index, dtype=np.float64) * self.step

    def centres(self) -> np.ndarray:
        """Seconds at the centre of every snippet, shape (num,)."""
        return self.to_seconds(np.arange(self.num) + 0.5)

    @property
    def end(self) -> float:
        return self.origin + self.num * self.step
