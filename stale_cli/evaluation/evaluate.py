"""``stale evaluate``: a predictions file (JSON or CSV) and an annotation file in, detection mAP out.

The metric itself, exactly as the official ActivityNet evaluator computes it, is :mod:`stale_cli.metric`; this
module reads the files, picks the subset, the evaluated classes (a zero-shot split's unseen ones) and the tIoU
thresholds (the dataset's, docs/zero-shot.md).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stale_cli.errors import DataError, InputError
from stale_cli.fileio import read_json
from stale_cli.metric import evaluate_detection
from stale_cli.model import datasets
from stale_cli.model.data.annotations import Annotations, load_annotations
from stale_cli.model.data.splits import load_split, match_classes

log = logging.getLogger(__name__)

THUMOS14_TIOUS = datasets.THUMOS14.tious
ACTIVITYNET_TIOUS = datasets.ACTIVITYNET.tious

# ------------------------------------------------------------------------------------------------ files and data


def _number(x, where: str) -> float:
    """A finite number given as a JSON number or a numeric string."""
    if isinstance(x, bool):
        raise ValueError(f"{where}: expected a number, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number, got {x!r}")
    return v


def _segment(seg, where: str) -> tuple[float, float]:
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise ValueError(f"{where}: 'segment' must be [start, end], got {seg!r}")
    start, end = _number(seg[0], f"{where} start"), _number(seg[1], f"{where} end")
    if end < start:
        raise ValueError(f"{where}: segment ends before it starts ({start} > {end})")
    return start, end


def parse_predictions(data, source: str = "predictions") -> dict[str, list[tuple[str, float, float, float]]]:
    """ActivityNet results JSON (docs/formats.md) -> video id -> [(label, start_s, end_s, score)] in file order.

    Anything that is not that schema raises :class:`DataError` with one line saying where and what.
    """
    hint = '; expected the ActivityNet results schema {"results": {video: [{"label", "score", "segment"}]}}'
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise DataError(f"{source}: not a prediction file (no 'results' object){hint}")
    run = data.get("external_data")
    reading = run.get("reading") if isinstance(run, dict) else None
    if isinstance(reading, dict):  # stale detect without --all: the list reduced for a person
        log.warning("%s holds detections reduced for reading (score floor %s, overlapping alternatives dropped); "
                    "mAP is lower on them than on the full ranked list: make it with stale detect --all",
                    source, reading.get("min_score"))
    out: dict[str, list[tuple[str, float, float, float]]] = {}
    try:
        for video, items in data["results"].items():
            if not isinstance(items, list):
                raise ValueError(f"results[{video!r}] must be a list of segments")
            rows = []
            for i, item in enumerate(items):
                where = f"results[{video!r}][{i}]"
                if not isinstance(item, dict) or not {"label", "score", "segment"} <= item.keys():
                    raise ValueError(f"{where} must have 'label', 'score' and 'segment'")
                if not isinstance(item["label"], str) or not item["label"].strip():
                    raise ValueError(f"{where}: 'label' must be a non-empty string")
                start, end = _segment(item["segment"], where)
                rows.append((item["label"], start, end, _number(item["score"], f"{where} score")))
            out[str(video)] = rows
    except ValueError as e:
        raise DataError(f"{source}: {e}{hint}") from None
    return out


def read_predictions(path: str | Path) -> dict[str, list[tuple[str, float, float, float]]]:
    """Read predictions from ActivityNet results JSON, or CSV with header ``video,label,start,end,score``."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return parse_predictions(read_json(path, "prediction file"), str(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # spreadsheet programs write a BOM
            reader = csv.DictReader(f)
            need = {"video", "label", "start", "end", "score"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise DataError(f"{path}: not a prediction CSV; expected the header video,label,start,end,score")
            out: dict[str, list[tuple[str, float, float, float]]] = {}
            for n, row in enumerate(reader, start=2):
                where = f"line {n}"
                start, end = _segment([row["start"], row["end"]], where)
                out.setdefault(row["video"], []).append((row["label"], start, end, _number(row["score"], where)))
    except FileNotFoundError:
        raise InputError(f"{path}: prediction file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read prediction CSV ({e})") from e
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    return out


def ground_truth(annotations: Annotations) -> dict[str, list[tuple[str, float, float]]]:
    """Annotations (already restricted to one subset) -> video id -> [(label, start_s, end_s)], file order."""
    return {vid: [(i.label, i.start, i.end) for i in v.instances] for vid, v in annotations.videos.items()}


def default_subset(annotations: Annotations) -> str:
    """The evaluation subset when none is given: the first of the datasets' test subsets present (THUMOS14
    ``test``, ActivityNet ``validation``)."""
    subsets = annotations.subsets()
    candidates = [d.test_subset for d in datasets.DATASETS.values()]
    for s in candidates:
        if s in subsets:
            return s
    raise InputError(
        f"{annotations.source}: no {' or '.join(map(repr, candidates))} subset; choose one with --subset "
        f"({', '.join(subsets)})"
    )


def split_classes(name: str, annotations: Annotations) -> list[str]:
    """The unseen (test) classes of a zero-shot split, spelled as in the annotations."""
    _, unseen = load_split(name)
    return match_classes(unseen, annotations.labels(), f"split {name}")


def default_tious(dataset: Optional[str], subset: str) -> tuple[float, ...]:
    """The thresholds of ``dataset``, or with none of the dataset evaluated on ``subset`` (THUMOS14 for
    ``test``, ActivityNet's otherwise)."""
    spec = datasets.get(dataset) if dataset is not None else datasets.for_test_subset(subset)
    return spec.tious


MAX_TIOUS = 100  # thresholds per evaluation; the standard sets have 5 and 10


def parse_tious(text: str) -> list[float]:
    """``"0.3,0.5,0.7"`` or ``"0.5:0.95:0.05"`` (start:stop:step, stop included) -> thresholds in (0, 1]."""
    text = text.strip()
    in_range = lambda v: math.isfinite(v) and 0.0 < v <= 1.0  # noqa: E731
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            # Bounds first: (stop - start) / step overflows or counts millions of thresholds otherwise.
            if not (in_range(start) and in_range(stop) and stop >= start and math.isfinite(step) and step > 0):
                raise InputError(f"--tiou {text!r}: start:stop:step needs 0 < start <= stop <= 1 and step > 0")
            gaps = (stop - start) / step  # may be inf for a denormal step
            if not gaps < MAX_TIOUS:
                raise InputError(
                    f"--tiou {text!r} gives {gaps + 1:.0f} thresholds; at most {MAX_TIOUS} (use a larger step)"
                )
            n = int(round(gaps)) + 1
            values = [float(x) for x in np.linspace(start, start + (n - 1) * step, n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--tiou: expected numbers like 0.3,0.5,0.7 or 0.5:0.95:0.05, got {text!r}") from None
    if not values or not all(in_range(v) for v in values):
        raise InputError(f"--tiou: thresholds must lie in (0, 1], got {text!r}")
    if len(values) > MAX_TIOUS:
        raise InputError(f"--tiou: {len(values)} thresholds; at most {MAX_TIOUS}")
    return values


def evaluate_files(
    predictions: str | Path,
    annotations: str | Path,
    subset: Optional[str] = None,
    split: Optional[str] = None,
    classes: Optional[Sequence[str]] = None,
    tious: Optional[Sequence[float]] = None,
) -> dict:
    """Evaluate a prediction file against an annotation file; the library side of ``stale evaluate``.

    ``split`` restricts the classes to that zero-shot split's unseen classes; ``classes`` to an explicit list.
    Returns :func:`evaluate_detection`'s dict plus ``subset``, ``split``, ``classes`` and ``num_predictions``.
    """
    if split is not None and classes is not None:
        raise InputError("give either a split or a class list, not both")
    ann = load_annotations(annotations)
    subset = subset if subset is not None else default_subset(ann)
    ann = ann.select_subset(subset)
    preds = read_predictions(predictions)
    if split is not None:
        classes = split_classes(split, ann)
    dataset = split.split("/")[0] if split else None
    tious = list(tious) if tious is not None else list(default_tious(dataset, subset))
    result = evaluate_detection(ground_truth(ann), preds, tious, classes)
    result.update(
        subset=subset,
        split=split,
        classes=list(result["per_class"]),
        num_predictions=sum(len(v) for v in preds.values()),
    )
    return result
