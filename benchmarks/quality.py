"""Does a trained STALE model localize? Held-out mAP on THUMOS14-shaped synthetic features with a known answer.

    python benchmarks/quality.py [--out bench_out/quality] [--device cpu] [--epochs N] [--seed 0]

The data: the real THUMOS14 annotation structure (``benchmarks/data/thumos14_annotations.json``, the dataset's
own annotation file): ``--train-videos`` videos of subset ``val`` to train on, ``--test-videos`` of ``test``
held out, both spread evenly over the videos' main classes (round robin, seeded), durations capped at
``--max-duration`` s (instances past the cap dropped). Features at ``--fps`` made
of:

- a dataset-wide mean direction (CLIP image embeddings share a large common component),
- per video a scene vector plus a slow random-walk drift (background that changes within a video),
- inside each instance, its class prototype plus a per-instance variation vector and a slow within-instance
  wobble, blended in with soft (sigmoid) edges, so the first and last snippets are mixtures; an instance that
  another class's instance also labels (THUMOS14's CliffDiving instances are all Diving too) shows both
  prototypes,
- white noise on every row.

Instances are as dense and as short as THUMOS14's own (median 2.9 s; many videos with dozens).

Rows of the report, all scored by ``stale evaluate``'s metric on the held-out videos (avg mAP over tIoU
0.3:0.1:0.7):

- **attainable**: a detector that knows the prototypes and the mean: class curves from the projection of each
  row onto each prototype, each class scored on its own (so a row of two labels scores both), through the
  product's own windowed post-processing with class curves as masks (``WindowedVideo``: windows of 256 snippets,
  fragments cut by window edges joined or dropped);
- **attainable, whole-video curves**: the same curves through the training-free mode's path
  (``segments_from_curve`` on the whole video, no windows);
- **stale**: ``stale train --preset thumos14`` (defaults; the text tower of ``--clip-model`` with seeded random
  weights, given as a local weights file: nothing is downloaded), then ``stale detect`` on the held-out feature
  files and ``stale evaluate``;
- **stale, class-curve masks**: the same checkpoint with its masks replaced by its class-probability curves
  (what the mask head is worth over the classifier alone);
- **mask quality**: mean tIoU between each foreground snippet's mask (column of M thresholded at 0.5, the
  connected run holding the snippet) and its ground-truth instance, over the held-out windows;
- the mask loss (Eq. 10) of the first and last epoch, from the checkpoint's history.

Everything is written under ``--out``; ``results.json`` holds the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stale_cli.fileio import write_json_atomic  # noqa: E402
from stale_cli.metric import evaluate_detection  # noqa: E402
from stale_cli.model.data.annotations import load_annotations  # noqa: E402
from stale_cli.model.data.windows import assign_labels, center_video, cut_windows, feature_timeline  # noqa: E402
from stale_cli.model.datasets import THUMOS14  # noqa: E402
from stale_cli.model.postprocess import (DetectConfig, WindowedVideo, finalize, segment_tiou,  # noqa: E402
                                         segments_from_curve)
from stale_cli.sidecar import read_features, write_features  # noqa: E402

ANNOTATIONS = ROOT / "benchmarks" / "data" / "thumos14_annotations.json"
TIOUS = [0.3, 0.4, 0.5, 0.6, 0.7]


def _main_label(video: dict) -> str | None:
    labels = [a["label"] for a in video["annotations"] if a["label"] != "Ambiguous"]
    return max(sorted(set(labels)), key=labels.count) if labels else None


def _stratified(db: dict, subset: str, n: int, rng) -> list[str]:
    """``n`` videos of ``subset``, spread evenly over their main classes (THUMOS14 is organised by class), so
    that every class of the held-out videos has training videos: a closed-set benchmark should not score classes
    the model never saw."""
    by_class: dict[str, list[str]] = {}
    for vid in sorted(db):
        label = _main_label(db[vid]) if db[vid]["subset"] == subset else None
        if label is not None:
            by_class.setdefault(label, []).append(vid)
    pools = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    chosen: list[str] = []
    while len(chosen) < n and any(pools):
        for pool in pools:  # round robin over the classes
            if pool and len(chosen) < n:
                chosen.append(str(pool.pop()))
    return sorted(chosen)


def select_videos(args) -> dict:
    """The benchmark's annotation file: ``train_videos`` of val + ``test_videos`` of test, capped in duration."""
    db = json.loads(ANNOTATIONS.read_text())["database"]
    rng = np.random.default_rng(args.seed)
    out = {}
    for subset, n in (("val", args.train_videos), ("test", args.test_videos)):
        for vid in _stratified(db, subset, n, rng):
            x = db[vid]
            duration = min(float(x["duration"]), args.max_duration)
            anns = []
            for a in x["annotations"]:
                s, e = float(a["segment"][0]), min(float(a["segment"][1]), duration)
                if a["label"] != "Ambiguous" and e - s >= 0.2:
                    anns.append({"segment": [round(s, 3), round(e, 3)], "label": a["label"]})
            out[vid] = {"subset": subset, "duration": duration, "annotations": anns}
    return {"database": out}


class Generator:
    """Synthetic CLIP-like features (T, D) for annotated videos; see the module docstring."""

    def __init__(self, classes: list[str], dim: int, fps: float, seed: int):
        self.rng = np.random.default_rng(seed)
        self.dim, self.fps = dim, fps
        self.mean = 2.0 * self.unit(1)[0]  # shared by every row of every video
        self.prototypes = {c: p for c, p in zip(classes, self.unit(len(classes)))}  # (D,) unit each

    def unit(self, n: int) -> np.ndarray:
        """``n`` random unit vectors: (n, D)."""
        v = self.rng.normal(size=(n, self.dim))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def _walk(self, T: int, scale: float, smooth: float) -> np.ndarray:
        """A slow random walk (T, D) whose per-row step is ``scale`` in norm, low-passed over ``smooth`` s."""
        steps = self.unit(T) * scale  # (T, D)
        walk = np.cumsum(steps, axis=0)
        k = max(1, int(smooth * self.fps))
        kernel = np.ones(k) / k
        return np.stack([np.convolve(walk[:, d], kernel, mode="same") for d in range(self.dim)], axis=1)

    def _look(self, a: dict, earlier: list[dict]) -> np.ndarray:
        """The class part of instance ``a``: its prototype, or, when an earlier instance of another class spans the
        same action (tIoU >= 0.5; THUMOS14 labels every CliffDiving instance Diving too), the normalised sum of
        both prototypes, so that the row (drawn over the earlier instance) shows both labels."""
        p = self.prototypes[a["label"]]
        s, e = a["segment"]
        for b in earlier:
            bs, be = b["segment"]
            if b["label"] != a["label"] and segment_tiou(s, e, np.array([bs]), np.array([be]))[0] >= 0.5:
                q = p + self.prototypes[b["label"]]
                return q / np.linalg.norm(q)
        return p

    def video(self, duration: float, annotations: list[dict]) -> np.ndarray:
        T = int(np.floor(duration * self.fps))
        t = np.arange(T) / self.fps  # (T,) seconds: row k is the frame at k / fps (the feature-file contract)
        bg = 0.8 * self.unit(1)[0] + self._walk(T, 0.05, 4.0)  # scene + drift: (T, D)
        x = self.mean + bg
        for j, a in enumerate(annotations):
            s, e = a["segment"]
            tau = 0.25  # seconds: edge softness
            w = 1 / (1 + np.exp(-(t - s) / tau)) / (1 + np.exp(-(e - t) / tau))  # (T,)
            near = w > 1e-3
            if not near.any():
                continue
            n = int(near.sum())
            act = (self._look(a, annotations[:j]) + 0.6 * self.unit(1)[0]  # class + this instance's own look
                   + self._walk(n, 0.08, 1.0))  # (n, D): motion within the instance
            x[near] = (1 - w[near, None]) * x[near] + w[near, None] * (self.mean + 0.3 * bg[near] + act)
        x += self.rng.normal(scale=0.55 / np.sqrt(self.dim), size=x.shape)  # noise of norm ~0.55 per row
        return x.astype(np.float32)


def write_dataset(args, out: Path) -> tuple[Path, Path, Generator, list[str]]:
    ann = select_videos(args)
    ann_path = out / "annotations.json"
    write_json_atomic(ann_path, ann)
    classes = sorted({a["label"] for v in ann["database"].values() for a in v["annotations"]})
    import open_clip

    dim = int(open_clip.get_model_config(args.clip_model)["embed_dim"])
    gen = Generator(classes, dim, args.fps, args.seed)
    feats = out / "features"
    write_feature_files(gen, ann, feats, args.fps, args.clip_model, "random")
    return ann_path, feats, gen, classes


def write_feature_files(gen: Generator, ann: dict, feats: Path, fps: float, clip_model: str, weights: str) -> None:
    """``feats/<subset>/<video>.npy`` and sidecars for every video of ``ann``, drawn by ``gen``."""
    shutil.rmtree(feats, ignore_errors=True)  # features of an earlier run's videos would be scored too
    for vid, v in sorted(ann["database"].items()):
        x = gen.video(v["duration"], v["annotations"])
        meta = {"fps": fps, "timestamps": (np.arange(len(x)) / fps).round(4).tolist(),
                "duration": v["duration"], "source": f"synthetic:{vid}", "clip_model": clip_model,
                "clip_weights": weights, "num_frames": len(x)}
        write_features(feats / v["subset"] / f"{vid}.npy", x, meta)


def avg_map(gt: dict, preds: dict, classes: list[str]) -> tuple[float, list[float]]:
    res = evaluate_detection(gt, preds, TIOUS, classes)
    per = [float(m) for m in res["mAP"]]
    return float(np.mean(per)), per


def ground_truth(ann_path: Path, subset: str) -> tuple[dict, list[str]]:
    ann = load_annotations(ann_path).select_subset(subset)
    gt = {v.video_id: [(i.label, i.start, i.end) for i in v.instances] for v in ann.videos.values()}
    classes = sorted({lab for inst in gt.values() for lab, _, _ in inst})
    return gt, classes


def window_detections(outputs_of, feats_dir: Path, classes: list[str], settings, data_cfg=None) -> list[dict]:
    """Detections on every held-out window under each ``(DetectConfig, use_masks)`` of ``settings``, the window's
    outputs computed once: ``outputs_of(xw, valid_len)`` -> probabilities (T, K+1) and masks (T, T) or None.
    Without masks the class curves are the masks (training-free post-processing). ``data_cfg``: a checkpoint's
    (its windows and video-mean removal); default the thumos14 preset on the features as they are."""
    data_cfg = data_cfg or replace(THUMOS14.data, video_mean=0.0)
    preds = [{} for _ in settings]
    for npy in sorted(feats_dir.glob("*.npy")):
        x, meta = read_features(npy)
        videos = [WindowedVideo(len(x), cfg) for cfg, _ in settings]  # joins fragments across windows
        for w, xw in cut_windows(center_video(x.astype(np.float32), data_cfg.video_mean), meta, data_cfg):
            probs, masks = outputs_of(xw, w.valid_len)
            for video, (cfg, use_masks) in zip(videos, settings):
                video.add(probs, masks if use_masks else None, w.timeline, w.start_row, w.valid_len)
        for found, video, (cfg, _) in zip(preds, videos, settings):
            dets = finalize(video.segments(), float(meta.duration), cfg)
            found[npy.stem] = [(classes[k], s, e, c) for k, s, e, c in dets]
    return preds


def curve_detections(curves_of, feats_dir: Path, classes: list[str], cfg: DetectConfig) -> dict:
    """Detections of the training-free path on every held-out video: ``curves_of(x, len(x))`` -> probabilities
    (N, K+1) of the whole video, segments from the whole-video curves (no windows)."""
    preds = {}
    for npy in sorted(feats_dir.glob("*.npy")):
        x, meta = read_features(npy)
        probs = curves_of(x.astype(np.float32), len(x))
        segs = segments_from_curve(probs, feature_timeline(meta, len(x)), cfg)
        dets = finalize(segs, float(meta.duration), cfg)
        preds[npy.stem] = [(classes[k], s, e, c) for k, s, e, c in dets]
    return preds


def oracle_curves(gen: Generator, classes: list[str]):
    P = np.stack([gen.prototypes[c] for c in classes])  # (K, D)

    def curves(xw: np.ndarray, valid_len: int) -> np.ndarray:
        proj = (xw - gen.mean) @ P.T  # (T, K): ~1 inside an instance of the class, ~0 elsewhere
        # each class on its own (background at half strength), so a row that shows two classes scores both
        fg = 1 / (1 + np.exp(-12.0 * (proj - 0.5)))  # (T, K)
        return np.concatenate([fg, 1 - fg.max(1, keepdims=True)], axis=1)  # (T, K+1); only [:, :K] is read

    return curves


def random_clip_weights(name: str, out: Path) -> Path:
    """A local weights file of ``name`` with seeded random weights: stale loads it as a user's own file."""
    path = out / f"{name}-random.pt"
    if not path.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # side-by-side runs share the file: write, rename
        torch.save(open_clip.create_model(name, pretrained=None).state_dict(), tmp)
        os.replace(tmp, path)
    return path


def run_cli(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "stale_cli", *args]
    print("+ stale " + " ".join(args), flush=True)
    with open(log, "a") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"error: `stale {args[0]}` failed (exit {r.returncode}); see {log}")


def model_analysis(ckpt: Path, feats_dir: Path, ann_path: Path, gt_classes: list[str], device: str) -> dict:
    """Class-curve-mask mAP and mask quality of a checkpoint on the held-out features."""
    import torch

    from stale_cli.model.checkpoint import load_checkpoint

    model, info = load_checkpoint(ckpt, device=device)
    model.eval()
    classes = list(info.class_names)
    data_cfg = info.data_config
    with torch.no_grad():
        text = model.encode_classes(classes)

        def run(xw: np.ndarray, valid_len: int):
            x = torch.from_numpy(xw)[None].to(device)
            valid = (torch.arange(len(xw)) < valid_len)[None].to(device)
            return model(x, valid, text)

        def outputs(xw: np.ndarray, valid_len: int) -> tuple[np.ndarray, np.ndarray]:
            o = run(xw, valid_len)
            return o["probs"][0].float().cpu().numpy(), o["masks"][0].float().cpu().numpy()

        preds, mask_preds = window_detections(outputs, feats_dir, classes, [
            (DetectConfig(), False),  # the class curves as masks
            (replace(info.detect_config, mask_weight=1.0), True),  # the masks alone (the paper's inference)
        ], data_cfg)
        ann = load_annotations(ann_path).select_subset("test")
        index = {c: i for i, c in enumerate(classes)}
        ious = []
        for npy in sorted(feats_dir.glob("*.npy")):
            x, meta = read_features(npy)
            inst = [(i.start, i.end, index[i.label]) for i in ann.videos[npy.stem].instances if i.label in index]
            for w, xw in cut_windows(center_video(x.astype(np.float32), data_cfg.video_mean), meta, data_cfg):
                t = assign_labels(w.timeline, w.valid_len, inst, len(classes))
                m = run(xw, w.valid_len)["masks"][0].float().cpu().numpy()  # (T, T)
                V = w.valid_len
                for col in np.nonzero(t["labels"][:V] < len(classes))[0]:
                    ious.append(_run_iou(m[:V, col] > 0.5, t["masks"][:V, col] > 0.5, col))
    gt, _ = ground_truth(ann_path, "test")
    curve_avg, _ = avg_map(gt, preds, gt_classes)
    mask_avg, _ = avg_map(gt, mask_preds, gt_classes)
    return {"curve_mask_avg_map": curve_avg, "mask_only_avg_map": mask_avg,
            "mask_tiou": float(np.mean(ious)) if ious else 0.0}


def _run_iou(pred: np.ndarray, target: np.ndarray, at: int) -> float:
    """tIoU of the runs of ``pred`` and ``target`` holding snippet ``at`` (the candidate is foreground)."""
    def run(fg):
        fg = fg.copy()
        fg[at] = True
        s = at
        while s > 0 and fg[s - 1]:
            s -= 1
        e = at + 1
        while e < len(fg) and fg[e]:
            e += 1
        return s, e

    (a, b), (c, d) = run(pred), run(target)
    inter = max(0, min(b, d) - max(a, c))
    return inter / (max(b, d) - min(a, c))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "quality")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clip-model", default="ViT-B-16")
    ap.add_argument("--epochs", type=int, default=None, help="override stale train's default")
    ap.add_argument("--train-videos", type=int, default=40)
    ap.add_argument("--test-videos", type=int, default=30)
    ap.add_argument("--max-duration", type=float, default=150.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-only", action="store_true", help="only build the data and score the oracle")
    ap.add_argument("--train-args", default="", help="extra arguments for stale train (quoted)")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    log.write_text("")
    t0 = time.perf_counter()
    ann_path, feats, gen, classes = write_dataset(args, out)
    gt, gt_classes = ground_truth(ann_path, "test")
    n_inst = sum(len(v) for v in gt.values())
    print(f"data: {len(classes)} classes, {n_inst} held-out instances, features under {feats}", flush=True)
    oracle_of = oracle_curves(gen, classes)
    (oracle_preds,) = window_detections(lambda xw, v: (oracle_of(xw, v), None), feats / "test", classes,
                                        [(DetectConfig(), False)])
    oracle, oracle_per = avg_map(gt, oracle_preds, gt_classes)
    res = {"attainable_avg_map": oracle, "attainable_per_tiou": oracle_per}
    print(f"attainable (knows the prototypes): avg mAP {100 * oracle:.1f}", flush=True)
    whole, whole_per = avg_map(gt, curve_detections(oracle_of, feats / "test", classes, DetectConfig()), gt_classes)
    res.update(attainable_whole_video_avg_map=whole, attainable_whole_video_per_tiou=whole_per)
    print(f"attainable, whole-video curves (the training-free path): avg mAP {100 * whole:.1f}", flush=True)
    if not args.oracle_only:
        ckpt = out / "stale.pt"
        extra = args.train_args.split() + (["--epochs", str(args.epochs)] if args.epochs else [])
        t_train = time.perf_counter()
        run_cli("train", "--features", str(feats / "val"), "--annotations", str(ann_path), "--preset", "thumos14",
                "--clip-model", args.clip_model, "--device", args.device,
                "--clip-weights", str(random_clip_weights(args.clip_model, out.parent)),
                "--output", str(ckpt), "--no-progress", *extra, log=log)
        res["train_seconds"] = time.perf_counter() - t_train
        preds = out / "predictions.json"
        classes_file = out / "classes.txt"
        classes_file.write_text("\n".join(classes) + "\n")  # closed set: the held-out videos' classes were trained
        # This world's prototypes are unrelated to the class names (the text says nothing), and every action is
        # one of the names asked: no distractors, no frozen-CLIP prior. benchmarks/zero_shot.py measures those.
        run_cli("detect", str(feats / "test"), "--checkpoint", str(ckpt), "--classes-file", str(classes_file),
                "--device", args.device, "--no-distractors", "--prior-weight", "0",
                "--all", "--output", str(preds), "--no-progress", log=log)  # --all: the ranked list mAP needs
        gt_file = out / "test_classes.txt"
        gt_file.write_text("\n".join(gt_classes) + "\n")  # the classes with held-out ground truth
        run_cli("evaluate", str(preds), "--annotations", str(ann_path), "--subset", "test",
                "--classes-file", str(gt_file),
                "--output", str(out / "evaluation.json"), log=log)
        ev = json.loads((out / "evaluation.json").read_text())
        res["stale_avg_map"] = float(ev["average_mAP"])  # over tIoU 0.3:0.1:0.7
        import torch

        hist = torch.load(out / "stale.last.pt", map_location="cpu", weights_only=True)["extra"]["history"]
        res["mask_loss_first_epoch"], res["mask_loss_last_epoch"] = hist[0]["mask"], hist[-1]["mask"]
        res["epochs"] = len(hist)
        res["best_epoch"] = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
        res["history"] = [{k: h[k] for k in ("epoch", "cls", "mask", "comp", "const", "val_map50") if k in h}
                          for h in hist]
        res.update(model_analysis(ckpt, feats / "test", ann_path, gt_classes, args.device))
        res["ratio_to_attainable"] = res["stale_avg_map"] / oracle
    res["seconds"] = time.perf_counter() - t0
    write_json_atomic(out / "results.json", res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
