"""Detection mAP exactly as the official ActivityNet evaluator computes it (docs/zero-shot.md).

The reference is ``Evaluation/eval_detection.py`` and ``Evaluation/utils.py`` of github.com/activitynet/ActivityNet
(``ANETdetection``, ``compute_average_precision_detection``, ``interpolated_prec_rec``, ``segment_iou``). This module
is an independent implementation that reproduces its numbers, including its corner cases:

* Per class, predictions are ranked with ``np.argsort(scores)[::-1]`` (NumPy's default sort, then reversed), the
  official expression. Ties therefore come out in the order that expression gives: for the short per-class lists of
  hand-made tests (up to 16 items, where NumPy's default sort is an insertion sort) the *later* prediction in the
  file comes first. Predictions of a class keep the order of the file (videos in file order, then list order)
  before ranking, as the official DataFrame ``groupby('label')`` does.
* Each prediction is matched, at each tIoU threshold separately, to the ground truth instance of the same class and
  video with the highest tIoU that no higher-ranked prediction took yet (ground truth ranked with
  ``np.argsort(tiou)[::-1]``); a prediction whose best free instance is below the threshold is a false positive,
  as is a second prediction on an instance already taken.
* A prediction for a video with no ground truth instance of its class -- including videos absent from the ground
  truth subset altogether -- is a false positive (the official code does not filter predictions by subset).
* AP is the VOC-2011 interpolated area (``interpolated_prec_rec``); a class with no predictions gets AP 0; mAP is
  the plain mean over the evaluated classes; the average mAP is the mean over thresholds.
* The evaluated classes are the labels of the ground truth subset (``Ambiguous`` is not a class and is dropped, as
  in the THUMOS14 evaluation), optionally restricted to a list (a zero-shot split's unseen classes).
* A prediction label that the ground truth subset does not know (the official code fails on it with a
  ``KeyError``) is left out with one warning: such a class has no AP, and its predictions cannot change the AP of
  an evaluated class (``stale detect`` is routinely run with more classes than a test subset holds). A label that
  differs from a ground-truth class only in spelling (``high jump`` / ``HighJump``, see
  :func:`stale_cli.data.splits.class_key`) counts as that class, where the official code would fail. Predictions of known classes that
  are outside the evaluated list are ignored (AP is computed per class).
* Not reproduced: the official "blocked videos" list fetched from a server (there is none offline).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from stale_cli import datasets
from stale_cli.data.annotations import IGNORED_LABELS, Annotations, load_annotations
from stale_cli.data.splits import class_key, load_split, match_classes
from stale_cli.errors import DataError, InputError
from stale_cli.fileio import read_json

log = logging.getLogger(__name__)

THUMOS14_TIOUS = datasets.THUMOS14.tious
ACTIVITYNET_TIOUS = datasets.ACTIVITYNET.tious

# A ground truth: video id -> [(label, start_s, end_s)]. Predictions: video id -> [(label, start_s, end_s, score)].
GroundTruth = Mapping[str, Sequence[tuple[str, float, float]]]
Predictions = Mapping[str, Sequence[tuple[str, float, float, float]]]


# --------------------------------------------------------------------------------------------------- the metric


def segment_iou(target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """tIoU of one segment ``(2,)`` [start, end] with each of ``(N, 2)`` segments -> ``(N,)``.

    Same arithmetic as the official ``segment_iou`` (two zero-length segments give NaN there and here).
    """
    inter = (np.minimum(target[1], candidates[:, 1]) - np.maximum(target[0], candidates[:, 0])).clip(0)  # (N,)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter  # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter.astype(float) / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated average precision: area under the precision envelope at each change of recall."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]  # precision envelope: max precision at any higher recall
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision_at_tiou(
    gt_videos: Sequence[str],
    gt_segments: np.ndarray,
    pred_videos: Sequence[str],
    pred_segments: np.ndarray,
    pred_scores: np.ndarray,
    tious: Sequence[float],
) -> np.ndarray:
    """AP of one class at each tIoU threshold -> ``(len(tious),)``.

    ``gt_segments``: ``(G, 2)`` seconds, ``gt_videos``: G video ids; ``pred_segments``: ``(P, 2)``, ``pred_videos``:
    P ids, ``pred_scores``: ``(P,)``, both in the order of the prediction file. Matching and ranking as the official
    ``compute_average_precision_detection`` (module docstring).
    """
    n_t = len(tious)
    ap = np.zeros(n_t)
    if len(pred_scores) == 0:
        return ap
    npos = len(gt_videos)
    assert npos > 0, "a class without ground truth cannot be evaluated"
    gt_segments = np.asarray(gt_segments, dtype=float).reshape(-1, 2)
    pred_segments = np.asarray(pred_segments, dtype=float).reshape(-1, 2)
    gt_of_video: dict[str, list[int]] = defaultdict(list)
    for g, v in enumerate(gt_videos):
        gt_of_video[v].append(g)

    order = np.argsort(np.asarray(pred_scores, dtype=float))[::-1]  # the official ranking, ties included
    lock = np.full((n_t, npos), -1, dtype=np.int64)  # which prediction took each instance, per threshold
    tp = np.zeros((n_t, len(order)))
    fp = np.zeros((n_t, len(order)))
    for rank, p in enumerate(order):
        gts = gt_of_video.get(pred_videos[p])
        if gts is None:
            fp[:, rank] = 1
            continue
        gts = np.asarray(gts)
        tiou = segment_iou(pred_segments[p], gt_segments[gts])  # (G_v,)
        by_tiou = np.argsort(tiou)[::-1]
        for t, thr in enumerate(tious):
            for j in by_tiou:
                if tiou[j] < thr:
                    break
                if lock[t, gts[j]] >= 0:
                    continue
                tp[t, rank] = 1
                lock[t, gts[j]] = rank
                break
            if not tp[t, rank]:
                fp[t, rank] = 1

    tp_cum = np.cumsum(tp, axis=1)  # (n_t, P)
    fp_cum = np.cumsum(fp, axis=1)
    recall = tp_cum / npos
    precision = tp_cum / (tp_cum + fp_cum)
    for t in range(n_t):
        ap[t] = interpolated_ap(precision[t], recall[t])
    return ap


def evaluate_detection(
    gt: GroundTruth,
    preds: Predictions,
    tious: Sequence[float],
    classes: Optional[Iterable[str]] = None,
) -> dict:
    """mAP of ``preds`` against ``gt`` at each threshold.

    ``gt``: video id -> [(label, start_s, end_s)] of the evaluated subset (``Ambiguous`` instances are dropped
    here); ``preds``: video id -> [(label, start_s, end_s, score)], in file order. ``classes``: evaluate only these
    (default: every label of ``gt``); each must have ground truth. Predictions of other labels are ignored, those
    of labels without ground truth with a warning. Returns ``{"tiou", "mAP", "average_mAP",
    "per_class": {class: [AP per tIoU]}}``, fractions in [0, 1].
    """
    tious = [float(t) for t in tious]
    if not tious:
        raise InputError("no tIoU thresholds given")
    gt_by_class: dict[str, tuple[list[str], list[tuple[float, float]]]] = {}
    for video, instances in gt.items():
        for label, start, end in instances:
            if label.strip().lower() in IGNORED_LABELS:
                continue
            videos, segs = gt_by_class.setdefault(label, ([], []))
            videos.append(video)
            segs.append((float(start), float(end)))
    if not gt_by_class:
        raise DataError("the ground truth has no annotated instances to evaluate against (check --subset)")

    # A label spelled differently from the ground truth ("high jump" for "HighJump") is mapped to it.
    by_key = {class_key(c): c for c in gt_by_class}
    spelling = {}
    for lab in {lab for insts in preds.values() for lab, *_ in insts}:
        spelling[lab] = lab if lab in gt_by_class else by_key.get(class_key(lab))
    # `stale detect` is routinely run with a wider class list than a test subset holds: such a class has no AP,
    # and its predictions cannot change another class's AP, so they are left out (the official code fails).
    unknown = sorted(lab for lab, to in spelling.items() if to is None)
    if unknown:
        dropped = sum(1 for insts in preds.values() for lab, *_ in insts if spelling[lab] is None)
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        log.warning("left out %d prediction(s) of %d label(s) without ground truth in this subset: %s",
                    dropped, len(unknown), shown)
    if classes is None:
        eval_classes = sorted(gt_by_class)
    else:
        eval_classes = list(dict.fromkeys(by_key.get(class_key(c), c) for c in classes))
        missing = [c for c in eval_classes if c not in gt_by_class]
        if missing:
            raise DataError(
                f"class(es) without any ground truth instance in this subset: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; check the class names and --subset"
            )
        if not eval_classes:
            raise InputError("no classes to evaluate")

    pred_by_class: dict[str, tuple[list[str], list[tuple[float, float]], list[float]]] = {
        c: ([], [], []) for c in eval_classes
    }
    for video, instances in preds.items():
        for label, start, end, score in instances:
            label = spelling[label]
            if label in pred_by_class:
                videos, segs, scores = pred_by_class[label]
                videos.append(video)
                segs.append((float(start), float(end)))
                scores.append(float(score))

    per_class: dict[str, list[float]] = {}
    for c in eval_classes:
        gv, gs = gt_by_class[c]
        pv, ps, sc = pred_by_class[c]
        if not pv:
            log.info("no predictions of class %r: its AP is 0", c)
        ap = average_precision_at_tiou(gv, np.asarray(gs), pv, np.asarray(ps), np.asarray(sc), tious)
        per_class[c] = [float(x) for x in ap]
    ap_matrix = np.array([per_class[c] for c in eval_classes])  # (K_eval, n_t)
    m_ap = ap_matrix.mean(axis=0)  # (n_t,)
    return {
        "tiou": [round(t, 6) for t in tious],
        "mAP": [float(x) for x in m_ap],
        "average_mAP": float(m_ap.mean()),
        "per_class": per_class,
    }


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
