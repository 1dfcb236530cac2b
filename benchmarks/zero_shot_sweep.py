"""Sweep detection settings on the zero-shot benchmark's world (no training).

    python benchmarks/zero_shot.py --no-train --splits 0 --out bench_out/zero_shot   # builds the world once
    python benchmarks/zero_shot_sweep.py --out bench_out/zero_shot "(1.0, 0.0, True)" "(0.0, 0.05, True)"
    python benchmarks/zero_shot_sweep.py --out bench_out/zero_shot --splits 0 \
        --checkpoint bench_out/zero_shot/work/split_0/model.pt "new_names='stale', prior_weight=0.8"

Training-free mode: each argument is ``(video_mean, background_level, distractors)``. With ``--checkpoint`` (one
split's): each argument is keyword arguments of ``DetectSettings``, and the seen names are scored too. Printed: avg mAP % of the unseen names together
and one at a time, the share of negative videos with a detection >= the trusted score, and the median top score
on videos without / with the action, as means over the splits.

``--foreground RULE`` (with ``--checkpoint``) measures other rules for a snippet's foreground than the product's
``max(1 - P(background), L_hat)`` (``model.stale.detection_probabilities``, "open"): ``classifier`` (1 - P(background)
alone), ``mask`` (L_hat alone), ``product`` or ``mean`` of the two. The benchmark swaps the rule in, in its own
process; the product has no such option.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zero_shot import avg_map, detector_predictions, ground_truth, single_name_figures  # noqa: E402

from stale_cli.detection.clipmode import ClipModeConfig  # noqa: E402
from stale_cli.detection.detect import DetectSettings, Detector  # noqa: E402
from stale_cli.features.clip_backbone import load_clip  # noqa: E402
from stale_cli.model.data.splits import load_split, match_classes  # noqa: E402
from stale_cli.model.postprocess import DetectConfig  # noqa: E402,F401 (for --checkpoint settings)


FOREGROUND = {
    "max": lambda cls, lhat: cls.maximum(lhat),
    "classifier": lambda cls, lhat: cls,
    "mask": lambda cls, lhat: lhat,
    "product": lambda cls, lhat: cls * lhat,
    "mean": lambda cls, lhat: 0.5 * (cls + lhat),
}


def use_foreground_rule(rule: str) -> None:
    """Replace the foreground of ``detection_probabilities`` ("open" scoring) by ``FOREGROUND[rule]`` in this process:
    the class posterior as the product fuses it, times the rule's foreground."""
    import torch

    import stale_cli.model.stale as stale

    shipped = stale.detection_probabilities

    def probabilities(logits, fg, num_query=None, prior=None, prior_weight=0.0, scoring="open"):
        if scoring != "open":
            return shipped(logits, fg, num_query, prior, prior_weight, scoring)
        logits = logits.float()
        R = logits.shape[-1] - 1
        K = R if num_query is None else int(num_query)
        actions = stale.class_posterior(logits, prior, prior_weight)  # (B, T, R)
        classifier = 1 - logits.softmax(dim=-1)[..., R]  # (B, T)
        p = actions[..., :K] * FOREGROUND[rule](classifier, fg.float())[..., None]  # (B, T, K)
        return torch.cat([p, 1 - p.sum(dim=-1, keepdim=True)], dim=-1)

    stale.detection_probabilities = probabilities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the --out of benchmarks/zero_shot.py")
    ap.add_argument("--splits", default="0,1")
    ap.add_argument("--checkpoint", type=Path, help="a STALE checkpoint of the split(s) given")
    ap.add_argument("--foreground", choices=sorted(FOREGROUND), default="max", help="with --checkpoint")
    ap.add_argument("settings", nargs="+")
    args = ap.parse_args()
    if args.foreground != "max":
        use_foreground_rule(args.foreground)
    world = json.loads((args.out / "world.json").read_text())
    clip = load_clip("ViT-B-16", world["weights"], device="cpu")
    feats = Path(world["features"]) / "test"
    gt = ground_truth(Path(world["annotations"]))
    for spec in args.settings:
        if args.checkpoint:
            kw = eval(f"dict({spec})")  # noqa: S307 (a benchmark's own command line)
        else:
            video_mean, level, dis = ast.literal_eval(spec)
            cfg = replace(ClipModeConfig(), video_mean=video_mean, background_level=level)
        rows = []
        for k in map(int, args.splits.split(",")):
            seen, unseen = load_split(f"thumos14/75_25/{k}")
            seen, unseen = match_classes(seen, world["classes"], "split"), match_classes(unseen, world["classes"], "split")

            def make(classes):
                if args.checkpoint:
                    return Detector(DetectSettings(classes=classes, mode="stale", checkpoint=args.checkpoint, **kw))
                return Detector(DetectSettings(classes=classes, mode="clip", clip_model="ViT-B-16",
                                               clip_weights=world["weights"], clip_cfg=cfg, distractors=dis), clip=clip)

            s = single_name_figures(make, feats, gt, unseen)
            closed = avg_map(gt, detector_predictions(make(seen), feats), seen) if args.checkpoint else float("nan")
            rows.append((avg_map(gt, detector_predictions(make(unseen), feats), unseen), s["single_name_ap"],
                         s["negative_share"], s["negative_median_top"], s["positive_median_top"], closed))
        r = np.mean(rows, axis=0)
        print(f"{spec}: together {100 * r[0]:.1f}, alone {100 * r[1]:.1f}, negatives {100 * r[2]:.0f}%, "
              f"top score {r[4]:.2f} with / {r[3]:.2f} without the action, seen names {100 * r[5]:.1f}", flush=True)


if __name__ == "__main__":
    main()
