"""Temporal annotations in the ActivityNet format (docs/formats.md), for THUMOS14 and ActivityNet 1.3.

    {"database": {video_id: {"subset": str, "duration": float,
                             "annotations": [{"segment": [start_s, end_s], "label": str}, ...]}, ...}}

Segments and durations may be numbers or numeric strings. The THUMOS14 label ``Ambiguous`` is not a class and is
dropped, as in the official THUMOS evaluation. An optional top-level ``"classes"`` list fixes the class order;
otherwise classes are the sorted labels that occur. Used by training and by the evaluator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from stale_cli.errors import DataError
from stale_cli.fileio import read_json
from stale_cli.vocab import IGNORED_LABELS


@dataclass(frozen=True)
class Instance:
    start: float  # seconds
    end: float  # seconds, >= start
    label: str


@dataclass(frozen=True)
class VideoAnnotation:
    video_id: str
    subset: str
    duration: float | None  # seconds; None when the file does not give it
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Annotations:
    videos: dict[str, VideoAnnotation]  # video_id -> its annotation, in file order
    classes: tuple[str, ...]  # class names: the file's "classes" list, else the sorted labels that occur
    source: str = "annotations"  # file name, for error messages

    def subsets(self) -> list[str]:
        return sorted({v.subset for v in self.videos.values()})

    def select_subset(self, subset: str | None) -> "Annotations":
        """Only the videos of ``subset`` (None: all). An unknown subset -> DataError listing the ones there are."""
        if subset is None:
            return self
        videos = {k: v for k, v in self.videos.items() if v.subset == subset}
        if not videos:
            raise DataError(
                f"{self.source}: no videos in subset {subset!r}; subsets there: {', '.join(self.subsets()) or 'none'}"
            )
        return replace(self, videos=videos)

    def labels(self) -> list[str]:
        """Sorted labels of the instances present (which may be fewer than ``classes``)."""
        return sorted({i.label for v in self.videos.values() for i in v.instances})


def _number(value, what: str) -> float:
    """A JSON number or a numeric string -> finite float; anything else -> ValueError with ``what``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be a number, got {value!r}") from None
    else:
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return x


def _parse_video(vid: str, entry) -> VideoAnnotation:
    if not isinstance(entry, dict):
        raise ValueError(f"video {vid!r}: expected an object, got {type(entry).__name__}")
    subset = entry.get("subset", "")
    if not isinstance(subset, str):
        raise ValueError(f"video {vid!r}: 'subset' must be a string")
    duration = None
    if entry.get("duration") is not None:
        duration = _number(entry["duration"], f"video {vid!r}: duration")
        if duration <= 0:
            raise ValueError(f"video {vid!r}: duration must be positive, got {duration}")
    raw = entry.get("annotations", [])
    if not isinstance(raw, list):
        raise ValueError(f"video {vid!r}: 'annotations' must be a list")
    instances = []
    for j, ann in enumerate(raw):
        where = f"video {vid!r} annotation {j}"
        if not isinstance(ann, dict) or "segment" not in ann or "label" not in ann:
            raise ValueError(f"{where}: expected {{'segment': [start, end], 'label': name}}")
        label = ann["label"]
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: label must be a non-empty string")
        label = label.strip()
        if label.lower() in IGNORED_LABELS:
            continue
        seg = ann["segment"]
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
            raise ValueError(f"{where}: segment must be [start, end]")
        start, end = _number(seg[0], f"{where}: start"), _number(seg[1], f"{where}: end")
        if end < start:
            raise ValueError(f"{where}: segment ends before it starts ({start} > {end})")
        if end < 0:
            raise ValueError(f"{where}: segment [{start}, {end}] ends before the video starts (seconds from its "
                             "start are expected)")
        instances.append(Instance(max(start, 0.0), end, label))
    return VideoAnnotation(vid, subset, duration, tuple(instances))


def parse_annotations(data, source: str = "annotations") -> Annotations:
    """Validate an already-decoded ActivityNet-format object; malformed -> DataError naming the first problem."""
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise DataError(f"{source}: not an ActivityNet-format annotation file (no 'database' object at the top)")
    try:
        videos = {str(vid): _parse_video(str(vid), entry) for vid, entry in data["database"].items()}
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    declared = data.get("classes")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(c, str) and c.strip() for c in declared):
            raise DataError(f"{source}: 'classes' must be a list of class names")
        classes = tuple(c.strip() for c in declared if c.strip().lower() not in IGNORED_LABELS)
        unknown = sorted({i.label for v in videos.values() for i in v.instances} - set(classes))
        if unknown:
            raise DataError(f"{source}: labels {unknown[:5]} are used but missing from its 'classes' list")
    else:
        classes = tuple(sorted({i.label for v in videos.values() for i in v.instances}))
    return Annotations(videos, classes, source)


def load_annotations(path: str | Path, subset: str | None = None) -> Annotations:
    """Read an ActivityNet-format annotation file, optionally keeping one subset (e.g. THUMOS14 ``val``)."""
    path = Path(path)
    return parse_annotations(read_json(path, "annotation file"), str(path)).select_subset(subset)
