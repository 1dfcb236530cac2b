"""Frozen CLIP's curve of the unseen names weighed by a context foreground: how `DetectConfig.context_gate` was chosen.

    python benchmarks/zero_shot_gate.py --out <world> --work <work> --splits 0,1 --gates 0,0.1,0.2,0.3,0.5,1

For each split, the training-free mode's probabilities of the unseen names (every name asked together, the
distractors as shipped) are multiplied by ``w ** g`` for each exponent ``g`` of ``--gates``, then go through the
training-free mode's segment extraction on the whole video. ``w`` is:

- ``lctx`` (default): L_ctx of the split's checkpoint ``<world>/<work>/split_K/model.pt`` (fitted by `stale train`
  on the training videos' labels; ``benchmarks/zero_shot_context.py`` adds it to older checkpoints), relative to
  its level on the training foreground where the checkpoint records one, as detection reads it;
- ``rank``: a control that uses the same cue without a fit: the rank of each snippet's distance from its video's
  median snippet among the video's snippets, from 1/T to 1.

``g = 0`` is the training-free mode itself (its figure in ``benchmarks/zero_shot.py`` is the same). This weighs
frozen CLIP's reading alone; `stale detect --new-names both` then joins the model's reading by a noisy-OR, which
``benchmarks/zero_shot.py --analyse-only --readings stale`` measures. Prints avg mAP % per split and the means.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from zero_shot import avg_map, curve_predictions, open_world, unseen_names  # noqa: E402


def rank_weights(features: np.ndarray) -> np.ndarray:
    """Each row's rank (1/T .. 1) by its distance from the video's median snippet: (T,)."""
    from stale_cli.model.context import context_inputs

    d_med = context_inputs(features)[:, 0]
    return (np.argsort(np.argsort(d_med)) + 1.0) / len(d_med)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the world folder of benchmarks/zero_shot.py")
    ap.add_argument("--work", default="work", help="work folder holding split_K/model.pt (for --weigh lctx)")
    ap.add_argument("--splits", default="0")
    ap.add_argument("--gates", default="0,0.3", help="exponents g, comma-separated")
    ap.add_argument("--weigh", choices=("lctx", "rank"), default="lctx")
    args = ap.parse_args()

    from stale_cli.detection.clipmode import snippet_probabilities
    from stale_cli.detection.detect import CLIP_WINDOWS, DetectSettings, Detector
    from stale_cli.model.checkpoint import read_checkpoint

    world, clip, feats, gt = open_world(args.out)
    gates = [float(g) for g in args.gates.split(",")]
    table = {}
    for k in (int(s) for s in args.splits.split(",")):
        unseen = unseen_names(k, world)
        det = Detector(DetectSettings(classes=unseen, mode="clip", clip_model=world["key"]["clip_model"],
                                      clip_weights=world["weights"]), clip=clip)
        if args.weigh == "lctx":
            context = read_checkpoint(args.out / args.work / f"split_{k}" / "model.pt")[1].context_foreground
            weigh = lambda x, context=context: context.relative(context.probabilities(x))  # noqa: E731
        else:
            weigh = rank_weights
        table[k] = []
        for g in gates:
            def probs_of(x, meta, g=g):
                p = snippet_probabilities(x, det.text, meta.fps, det.settings.clip_cfg, num_query=len(unseen))
                names = p[:, :-1] * weigh(x)[:, None] ** g  # (T, K)
                return np.concatenate([names, 1.0 - names.sum(axis=1, keepdims=True)], axis=1)

            preds = curve_predictions(feats, unseen, probs_of, block=CLIP_WINDOWS.num_snippets)
            table[k].append(100 * avg_map(gt, preds, unseen))
        print(f"split {k}: " + ", ".join(f"g={g:g} {v:.1f}" for g, v in zip(gates, table[k])), flush=True)
    means = np.mean(list(table.values()), axis=0)
    print(f"{args.weigh}, mean over splits {sorted(table)}: " + ", ".join(f"g={g:g} {v:.1f}" for g, v in zip(gates, means)))


if __name__ == "__main__":
    main()
