"""Defaults the command line shows in ``-h``, kept apart from the modules that use them so that building the
CLI (``stale -h``, ``stale --version``) imports neither torch nor numpy."""

from __future__ import annotations

import os

DEFAULT_FEATURE_FPS = 4.0  # frames/s sampled for features; detect and train default to it too
DEFAULT_BATCH_SIZE = 32


def default_workers() -> int:
    """Decoding processes by default: half the CPUs (the encoder's threads need the rest), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))
