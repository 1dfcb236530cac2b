"""Can a user choose `stale detect --new-names` from their own annotations? `stale zero-shot --unseen-file` on them.

    python benchmarks/zero_shot_own.py --out <world> [--split 0] [--hold-out 4] [--reference <world>/trained]

A user has annotated some classes of their footage and will ask a checkpoint trained on all of them for names
nobody annotated. Which reading of those new names should they use: either of the two below (`both`, the
default), frozen CLIP's (`clip`) or the model's foreground with CLIP's names (`foreground`)? The recipe in
docs/commands.md: hold some of their own names out with ``stale zero-shot --unseen-file`` and compare the rows.
This script plays that user in a world of
``benchmarks/zero_shot.py`` (built there first, with its ``--out``):

- the user's annotations: the world's, with every instance of the standard split's unseen classes removed (the
  names nobody annotated; their actions stay in the videos, unlabelled);
- the user's own split: ``--hold-out`` of the split's seen names, drawn with ``--seed``;
- ``stale zero-shot --unseen-file`` on them (train on the other seen names, the held-out ones background as the
  command's default makes them, detect and evaluate the held-out ones);
- the recipe's answer (the highest of the `both`, `clip` and `foreground` rows) beside the right one: the readings on
  the split's truly unseen names, from a ``benchmarks/zero_shot.py`` work dir (``--reference``) of the same world
  whose checkpoint was trained as the user's would be, the names nobody annotated as background
  (``zero_shot.py --train-args=--unseen-as-background``).

Writes ``<out>/<work>/own.json`` and prints one line per reading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import run_cli  # noqa: E402

from stale_cli.fileio import write_json_atomic  # noqa: E402
from stale_cli.model.data.splits import load_split  # noqa: E402

READINGS = ("both", "clip", "foreground")
RESULT_KEYS = {"both": "stale_unseen", "clip": "clip_unseen", "foreground": "stale_foreground_unseen"}  # zero_shot.py


def user_annotations(world_annotations: Path, unannotated: list[str]) -> dict:
    """The world's annotations with every instance of ``unannotated`` classes removed."""
    db = json.loads(world_annotations.read_text())["database"]
    drop = set(unannotated)
    return {"database": {vid: {**v, "annotations": [a for a in v["annotations"] if a["label"] not in drop]}
                         for vid, v in db.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a world built by benchmarks/zero_shot.py")
    ap.add_argument("--split", type=int, default=0, help="the standard split whose unseen names nobody annotated")
    ap.add_argument("--hold-out", type=int, default=4, help="how many of the user's own names to hold out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="own", help="sub-folder of --out for this run")
    ap.add_argument("--reference", type=Path, help="a zero_shot.py work dir of the same world with this split")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-args", default="", help="extra arguments for stale zero-shot (quoted)")
    args = ap.parse_args()

    world = json.loads((args.out / "world.json").read_text())
    seen, unseen = load_split(f"thumos14/75_25/{args.split}")
    held = sorted(np.random.default_rng(args.seed).choice(sorted(seen), size=args.hold_out, replace=False).tolist())
    work = args.out / args.work
    work.mkdir(parents=True, exist_ok=True)
    ann = work / "user_annotations.json"
    write_json_atomic(ann, user_annotations(Path(world["annotations"]), unseen))
    unseen_file = work / "held_out.txt"
    unseen_file.write_text(", ".join(held) + "\n")
    run_cli("zero-shot", "--dataset", "thumos14", "--unseen-file", str(unseen_file), "--features", world["features"],
            "--annotations", str(ann), "--work-dir", str(work / "protocol"), "--clip-model",
            world["key"]["clip_model"], "--clip-weights", world["weights"], "--device", args.device, "--no-progress",
            *args.train_args.split(), log=work / "log.txt")
    rows = json.loads((work / "protocol" / "results.json").read_text())["rows"]
    own = {m: 100 * rows[m]["average_mAP_mean"] for m in READINGS}
    chosen = max(READINGS, key=own.get)
    result = {"split": args.split, "held_out": held, "unannotated": unseen, "own_splits": own, "chosen": chosen}
    if args.reference is not None:
        ref = json.loads((args.reference / "results.json").read_text())["per_split"][str(args.split)]
        truth = {m: 100 * ref[RESULT_KEYS[m]] for m in READINGS}
        result.update(unannotated_names=truth, right=max(READINGS, key=truth.get))
    write_json_atomic(work / "own.json", result)
    print(f"held out of the user's names: {', '.join(held)}; never annotated: {', '.join(unseen)}")
    for m in READINGS:
        line = f"--new-names {m:<10}  held-out names {own[m]:5.1f}"
        if "unannotated_names" in result:
            line += f"   names nobody annotated {result['unannotated_names'][m]:5.1f}"
        print(line)
    print(f"the recipe chooses {chosen}" + (f"; the right choice is {result['right']}" if "right" in result else ""))


if __name__ == "__main__":
    main()
