"""What a person reads: how much of the truth survives `stale detect`'s reduction of the ranked list, and how many
rows it leaves, over a grid of score floors (stale_cli.detection.reading).

    python benchmarks/reading.py PREDICTIONS.json --annotations ANN.json [--subset test] [--classes-file F]

PREDICTIONS: a full ranked list (`stale detect --all -o x.json`, or the predictions `stale zero-shot` and
`benchmarks/quality.py` write). For each setting it prints:

- **found**: the share of ground-truth instances (of the evaluated classes) that a kept segment of their class
  matches at tIoU >= 0.5 (and in brackets the same share for the full list: the ceiling);
- **right**: the share of kept rows that match an instance of their class at tIoU >= 0.5;
- **rows / video**: median and 90th percentile of the rows a video gets, over the videos where an evaluated
  action happens, and the mean over the videos where none does;
- **avg mAP** (tIoU 0.3:0.1:0.7) of the reduced list, for contrast: mAP is what the full list is for.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stale_cli.detection.detections import Segment  # noqa: E402
from stale_cli.detection.reading import ReadingConfig, for_reading  # noqa: E402
from stale_cli.evaluation.evaluate import read_predictions  # noqa: E402
from stale_cli.metric import evaluate_detection  # noqa: E402
from stale_cli.model.data.annotations import load_annotations  # noqa: E402
from stale_cli.model.postprocess import segment_tiou  # noqa: E402
from stale_cli.vocab import read_classes_file  # noqa: E402

TIOUS = [0.3, 0.4, 0.5, 0.6, 0.7]
FLOORS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3]
MATCH = 0.5


def matched(segments: list, truth: list) -> tuple[int, int]:
    """(instances of ``truth`` matched by some segment of their label at tIoU >= MATCH, segments that match one)."""
    found, right = 0, 0
    for label in {t[0] for t in truth} | {s.label for s in segments}:
        gt = np.array([(s, e) for lab, s, e in truth if lab == label], dtype=np.float64).reshape(-1, 2)
        mine = [s for s in segments if s.label == label]
        if not len(gt):
            continue
        hits = np.zeros(len(gt), dtype=bool)
        for s in mine:
            ok = segment_tiou(s.start, s.end, gt[:, 0], gt[:, 1]) >= MATCH
            hits |= ok
            right += bool(ok.any())
        found += int(hits.sum())
    return found, right


def figures(preds: dict, gt: dict, classes: list, cfg) -> dict:
    """The figures of one setting; ``cfg`` None: the full list."""
    found = right = rows = 0
    per_video, empty_videos = [], []
    reduced = {}
    for vid in gt:
        segs = [Segment(lab, s, e, c, classes.index(lab)) for lab, s, e, c in preds.get(vid, []) if lab in classes]
        kept = segs if cfg is None else for_reading(segs, cfg)
        reduced[vid] = [(s.label, s.start, s.end, s.score) for s in kept]
        f, r = matched(kept, [t for t in gt[vid] if t[0] in classes])
        found, right, rows = found + f, right + r, rows + len(kept)
        (per_video if any(t[0] in classes for t in gt[vid]) else empty_videos).append(len(kept))
    instances = sum(1 for v in gt.values() for t in v if t[0] in classes)
    ev = evaluate_detection(gt, reduced, TIOUS, classes)
    return {"found": found / max(instances, 1), "right": right / max(rows, 1),
            "rows_median": float(np.median(per_video)), "rows_p90": float(np.percentile(per_video, 90)),
            "rows_without_action": float(np.mean(empty_videos)) if empty_videos else None,
            "avg_map": float(ev["average_mAP"]), "instances": instances,
            "videos": len(per_video) + len(empty_videos)}


def line(r: dict) -> str:
    without = "-" if r["rows_without_action"] is None else f"{r['rows_without_action']:.1f}"
    return (f"{100 * r['found']:.1f}% | {100 * r['right']:.1f}% | {r['rows_median']:.0f}, {r['rows_p90']:.0f} | "
            f"{without} | {100 * r['avg_map']:.1f} |")


HEADER = ("| found | right | rows / video with the action (median, p90) | rows / video without | avg mAP |\n"
          "|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", type=Path)
    ap.add_argument("--annotations", "-a", type=Path, required=True)
    ap.add_argument("--subset", default="test")
    ap.add_argument("--classes-file", type=Path, help="evaluate only these classes (default: every annotated one)")
    ap.add_argument("--per-class", type=int, nargs="*", default=[10, 20, 50, 200], help="per-class limits to "
                    "compare")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    ann = load_annotations(args.annotations).select_subset(args.subset)
    gt = {v.video_id: [(i.label, i.start, i.end) for i in v.instances if i.label != "Ambiguous"]
          for v in ann.videos.values()}
    classes = (read_classes_file(args.classes_file) if args.classes_file
               else sorted({t[0] for v in gt.values() for t in v}))
    gt_classes = sorted({t[0] for v in gt.values() for t in v} & set(classes))
    preds = read_predictions(args.predictions)
    full = figures(preds, gt, gt_classes, None)
    default = ReadingConfig()
    results = {"full": full, "floors": {}, "per_class": {}}
    print(f"{full['videos']} videos, {full['instances']} instances\n")
    print(f"| setting {HEADER}")
    print(f"| full list (--all) | {line(full)}")
    for floor in FLOORS:
        r = figures(preds, gt, gt_classes, replace(default, min_score=floor))
        results["floors"][floor] = r
        print(f"| floor {floor:g}, per class {default.per_class} | {line(r)}")
    for limit in args.per_class:
        r = figures(preds, gt, gt_classes, replace(default, per_class=limit))
        results["per_class"][limit] = r
        print(f"| floor {default.min_score:g}, per class {limit} | {line(r)}")
    print(f"\n(alternatives: tIoU > {default.max_overlap} with a better segment of the class)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
