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
  :func:`stale_cli.vocab.name_key`) counts as that class, where the official code would fail. Predictions of known classes that
  are outside the evaluated list are ignored (AP is computed per class).
* Not reproduced: the official "blocked videos" list fetched from a server (there is none offline).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from stale_cli.errors import DataError, InputError
from stale_cli.vocab import IGNORED_LABELS, name_key

log = logging.getLogger(__name__)

# A ground truth: video id -> [(label, start_s, end_s)]. Predictions: video id -> [(label, start_s, end_s, score)].
GroundTruth = Mapping[str, Sequence[tuple[str, float, float]]]
Predictions = Mapping[str, Sequence[tuple[str, float, float, float]]]


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
    by_key = {name_key(c): c for c in gt_by_class}
    spelling = {}
    for lab in {lab for insts in preds.values() for lab, *_ in insts}:
        spelling[lab] = lab if lab in gt_by_class else by_key.get(name_key(lab))
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
        eval_classes = list(dict.fromkeys(by_key.get(name_key(c), c) for c in classes))
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
