"""Give checkpoints trained before the context foreground existed (or before its level was recorded) their L_ctx, so
the zero-shot benchmark can read them as `stale train` now writes them, without training them again.

    python benchmarks/zero_shot_context.py --out <world> --from <work> --to <work2> --splits 0,1

L_ctx (stale_cli/model/context.py) is fitted on the training videos' features and labels only, never on the
model's weights, so fitting it afterwards with the same function, videos, classes and ``ignore_unseen`` as
`stale train` gives the checkpoint `stale train` would write today (``tests/test_detect_stale_mode.py`` checks
that `stale train` stores that fit). Each ``<from>/split_K/model.pt`` is copied to ``<to>/split_K/model.pt`` with
L_ctx added; the original is not touched. Then ``python benchmarks/zero_shot.py --out <world> --work <work2> --splits K
--analyse-only`` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the world folder of benchmarks/zero_shot.py")
    ap.add_argument("--from", dest="src", required=True, help="work folder holding split_K/model.pt")
    ap.add_argument("--to", dest="dst", required=True, help="work folder to write the copies into")
    ap.add_argument("--splits", default="0")
    args = ap.parse_args()

    import torch

    from stale_cli.fileio import atomic_path
    from stale_cli.model.checkpoint import read_checkpoint
    from stale_cli.model.context import fit_context_foreground
    from stale_cli.model.data.annotations import load_annotations
    from stale_cli.model.data.dataset import foreground_rows, load_video_set
    from stale_cli.model.datasets import get

    out = Path(args.out)
    world = json.loads((out / "world.json").read_text())
    for k in (int(s) for s in args.splits.split(",")):
        src = out / args.src / f"split_{k}" / "model.pt"
        ckpt, info = read_checkpoint(src)
        ignore_unseen = bool(info.extra.get("train_config", {}).get("ignore_unseen", True))
        ann = load_annotations(Path(world["annotations"])).select_subset(get(info.dataset).train_subset)
        vs = load_video_set(world["features"], list(ann.videos.values()), info.data_config)
        context = fit_context_foreground(foreground_rows(vs, list(info.class_names), ignore_unseen))
        ckpt["context_foreground"] = context.to_dict()
        dst = out / args.dst / f"split_{k}" / "model.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            torch.save(ckpt, tmp)
        print(f"split {k}: {src} -> {dst}; ignore_unseen={ignore_unseen}; L_ctx weights "
              f"{[round(w, 3) for w in context.weights]}, level {context.level:.3f}", flush=True)


if __name__ == "__main__":
    main()
