"""Videos that an action fills: do the readings of new names hold where L_ctx's assumption fails?

    python benchmarks/zero_shot_long.py --out <world> --work <work> --splits 0,1 --fills 0.3,0.5,0.7,0.9

The context foreground L_ctx (stale_cli/model/context.py), which weighs frozen CLIP's reading of a new name in
`stale detect --new-names both`, assumes that an action is a part of its video: its snippets lie far from the
video's typical snippet. In ActivityNet many actions fill most of their video, so the typical snippet is the
action. No world of ``benchmarks/zero_shot.py`` is built so; this script makes one from it: each test video that
holds an unseen-class instance is cut to a stretch around its longest such instance, which fills ``--fills`` of the
stretch (less where the video ends first), and the video's other instances inside the stretch are kept, clipped.

On the cut videos, the unseen names of each split are asked together and read by the training-free mode, by the
split's checkpoint ``<world>/<work>/split_K/model.pt`` as shipped (``both``), by ``both`` without the weighing
(``DetectConfig(context_gate=0)``), and by ``both`` with L_ctx fitted again on the training videos cut the same way
(around their longest training-class instance): a checkpoint trained on footage like the footage it reads. Prints
avg mAP % (tIoU 0.3:0.1:0.7) per split and fill, and the means; writes ``<world>/<work>/long.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from zero_shot import avg_map, detector_predictions, open_world, unseen_names  # noqa: E402


def cut_videos(feats_dir: Path, gt: dict, names: list[str], fill: float, dst: Path) -> dict:
    """Write the cut feature files (and sidecars) of the videos of ``gt`` holding an instance of ``names`` into
    ``dst``, each cut around its longest such instance; their ground truth, in the cut videos' seconds."""
    from stale_cli.sidecar import read_features, write_features

    dst.mkdir(parents=True, exist_ok=True)
    cut_gt = {}
    for vid, inst in sorted(gt.items()):
        mine = [(s, e) for lab, s, e in inst if lab in names]
        if not mine:
            continue
        x, meta = read_features(feats_dir / f"{vid}.npy")
        s, e = max(mine, key=lambda se: se[1] - se[0])
        pad = (e - s) * (1.0 / fill - 1.0) / 2.0
        t = np.asarray(meta.timestamps if meta.timestamps is not None else np.arange(len(x)) / meta.fps)
        rows = np.flatnonzero((t >= s - pad) & (t < e + pad))  # the rows whose frame lies in the stretch
        a, b = rows[0], rows[-1] + 1
        t0, t1 = float(t[a]), float(t[b - 1]) + 1.0 / meta.fps
        record = meta.to_json()
        record.update(timestamps=[float(v - t0) for v in t[a:b]], duration=t1 - t0, num_frames=int(b - a))
        write_features(dst / f"{vid}.npy", x[a:b], record)
        cut_gt[vid] = [(lab, max(s2, t0) - t0, min(e2, t1) - t0) for lab, s2, e2 in inst if s2 < t1 and e2 > t0]
    return cut_gt


def refit_on_cut_training_videos(ckpt: Path, world: dict, fill: float, tmp: Path) -> Path:
    """A copy of ``ckpt`` whose L_ctx is fitted, as `stale train` fits it, on the world's training videos cut the
    way the test videos are (around their longest training-class instance): the checkpoint of a user whose training
    footage is like the footage they detect on."""
    import torch

    from stale_cli.model.checkpoint import read_checkpoint
    from stale_cli.model.context import fit_context_foreground
    from stale_cli.model.data.annotations import load_annotations, parse_annotations
    from stale_cli.model.data.dataset import foreground_rows, load_video_set
    from stale_cli.model.datasets import get

    raw, info = read_checkpoint(ckpt)
    ann = load_annotations(Path(world["annotations"])).select_subset(get(info.dataset).train_subset)
    train_gt = {v.video_id: [(i.label, i.start, i.end) for i in v.instances] for v in ann.videos.values()}
    feats_dir = Path(world["features"]) / get(info.dataset).train_subset
    cut_gt = cut_videos(feats_dir, train_gt, list(info.class_names), fill, tmp / "train")
    database = {vid: {"subset": "train", "annotations": [
        {"label": lab, "segment": [s, e]} for lab, s, e in inst]} for vid, inst in cut_gt.items()}
    videos = list(parse_annotations({"database": database}).videos.values())
    vs = load_video_set(tmp / "train", videos, info.data_config)
    ignore_unseen = bool(info.extra.get("train_config", {}).get("ignore_unseen", True))
    raw["context_foreground"] = fit_context_foreground(
        foreground_rows(vs, list(info.class_names), ignore_unseen)).to_dict()
    path = tmp / "refit.pt"
    torch.save(raw, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the world folder of benchmarks/zero_shot.py")
    ap.add_argument("--work", required=True, help="work folder holding split_K/model.pt")
    ap.add_argument("--splits", default="0")
    ap.add_argument("--fills", default="0.3,0.5,0.7,0.9", help="shares of the cut video its action fills")
    args = ap.parse_args()

    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.model.postprocess import DetectConfig

    world, clip, feats, gt = open_world(args.out)
    fills = [float(f) for f in args.fills.split(",")]
    results = {}
    for k in (int(s) for s in args.splits.split(",")):
        unseen = unseen_names(k, world)
        ckpt = args.out / args.work / f"split_{k}" / "model.pt"
        readings = {
            "training-free": dict(mode="clip", clip_model=world["key"]["clip_model"], clip_weights=world["weights"]),
            "both": dict(mode="stale", checkpoint=ckpt),
            "both, no weighing": dict(mode="stale", checkpoint=ckpt, detect_config=DetectConfig(context_gate=0.0)),
        }
        for fill in fills:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                cut_gt = cut_videos(feats, gt, unseen, fill, tmp / "test")
                readings["both, L_ctx fitted on cut training videos"] = dict(
                    mode="stale", checkpoint=refit_on_cut_training_videos(ckpt, world, fill, tmp))
                row = {}
                for name, kw in readings.items():
                    det = Detector(DetectSettings(classes=unseen, **kw), clip=clip if kw["mode"] == "clip" else None)
                    row[name] = 100 * avg_map(cut_gt, detector_predictions(det, tmp / "test"), unseen)
            results.setdefault(str(k), {})[f"{fill:g}"] = row
            print(f"split {k}, fill {fill:g} ({len(cut_gt)} videos): "
                  + ", ".join(f"{n} {v:.1f}" for n, v in row.items()), flush=True)
    for fill in fills:
        rows = [results[k][f"{fill:g}"] for k in results]
        print(f"fill {fill:g}, mean over splits {sorted(results)}: "
              + ", ".join(f"{n} {np.mean([r[n] for r in rows]):.1f}" for n in rows[0]))
    (args.out / args.work / "long.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
