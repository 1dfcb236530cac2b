"""Video ids: the name each input's outputs take (feature files, detections, journal entries)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

from stale_cli.text import unicode_name

def video_ids(paths: Sequence[Path]) -> list[str]:
    """Output name of each input: its stem, or, where several inputs share a stem, ``stem-<8 hex>`` from a hash of
    the absolute path, so that no two inputs of a batch write the same file."""
    stems = [input_id(p) for p in paths]
    counts: dict = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else hashed_id(p) for s, p in zip(stems, paths)]


def input_id(path: Path) -> str:
    """An input's name in outputs: its stem, with bytes that are not UTF-8 written as ``\\xNN``."""
    return unicode_name(Path(path).stem)


def hashed_id(path: Path) -> str:
    """``stem-<8 hex>``: the name of an input whose stem another input (of this run or an earlier one) has."""
    return f"{input_id(path)}-{zlib.crc32(os.fsencode(Path(path).resolve())):08x}"
