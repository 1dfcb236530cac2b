"""Does STALE answer "when does X happen?" for names it never trained on? A zero-shot benchmark with a known answer.

    python benchmarks/zero_shot.py [--splits 0,1] [--out bench_out/zero_shot] [--device cpu] [--seed 0]

The world: synthetic CLIP-like features whose class prototypes are tied to CLIP's text tower, so that the name of
a class says something about how it looks, as it does with real CLIP, and a model can learn on some names what
carries to others.

- **CLIP**: ``--clip-model`` (ViT-B-16) with seeded random weights and OpenAI's trained logit scale (100), saved as
  a local weights file that every stale command loads as a user's own file (nothing is downloaded).
- **Prototypes**: each class name is put into our own caption templates (:data:`CAPTIONS`, not those of the
  training-free mode), encoded by that frozen text tower, averaged; the direction every caption shares (the mean
  over the 213 shipped THUMOS14 / ActivityNet names) is removed. A prototype is that text direction turned by a
  near-identity rotation shared by all classes (``--rotation``), mixed with a per-class random residual that no
  text predicts: ``p = cos(a) R d + sin(a) r`` with ``a`` = ``--residual-angle`` degrees.
- **Videos**: the THUMOS14 annotation structure (``benchmarks/data/thumos14_annotations.json``; ``--train-videos``
  of ``val``, ``--test-videos`` of ``test``, spread over the classes, capped at ``--max-duration`` s), features
  made as in ``benchmarks/quality.py`` (its ``Generator``: a dataset-wide offset, which plays the modality gap
  between image and text embeddings, a scene with drift per video, instances blended in with soft edges, noise).
  Test videos hold seen-class actions too, as THUMOS14's do.

Rows (avg mAP over tIoU 0.3:0.1:0.7 on the unseen names of each split, mean over the splits run):

- **prototype oracle**: knows each prototype and the offset (the attainable level);
- **text oracle**: knows the offset and each name's clean text direction, not the rotation or the residual;
- **training-free** and **STALE**: ``stale zero-shot --splits ...`` as shipped (train on the seen names, detect the
  unseen ones together, evaluate); each checkpoint read as shipped (``--new-names both``: frozen CLIP's reading
  or the model's foreground with frozen CLIP's names), by the trained model (``stale``) and by the model's
  foreground with frozen CLIP's names alone (``foreground``); frozen CLIP alone (``clip``) is the training-free row;
- **single names**: each unseen name asked alone on every test video (``stale detect`` with one class), its AP;
- **negative videos**: each unseen name on the test videos where it never happens: the share of those videos
  with a detection scoring at least ``TRUSTED_SCORE``;
- **STALE closed-set**: the same checkpoint asked the seen names on the test videos, scored on the seen names;
- validity checks: **shuffled names** (the ground truth of each unseen class relabelled as another unseen class:
  a detector that reads the names must drop to near chance), and a deliberately overfitting recipe run with
  ``--work overfit --train-args "--tune-text-encoder --lr-text 2e-5 --dropout 0 --epochs 40"``, which must lower
  the model's own reading of the unseen names.
- ``--actionness A`` (default 0): a variant of the world in which every action, of any class, also carries one
  shared direction of norm A: a class-agnostic look of "something is happening" that training on the seen classes
  can learn and lend to new ones. Without it, what actions share is only that they replace part of the scene.

Everything is written under ``--out``; ``<work>/results.json`` and ``<work>/results.md`` hold the figures
(``--work`` names a recipe's folder, so that recipes given with ``--train-args`` share the world). A run whose
world settings differ from those of the world already under ``--out`` (``--actionness`` forgotten, say) stops with
an error rather than build another world over it, which would leave every work folder there read on the wrong
features; ``--rebuild`` replaces it deliberately.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import TIOUS, Generator, run_cli, select_videos, write_feature_files  # noqa: E402

from stale_cli.fileio import write_json_atomic  # noqa: E402
from stale_cli.metric import evaluate_detection  # noqa: E402
from stale_cli.model.data.annotations import load_annotations  # noqa: E402
from stale_cli.model.data.splits import load_split  # noqa: E402
from stale_cli.model.postprocess import DetectConfig, finalize, segments_from_curve  # noqa: E402
from stale_cli.vocab import class_to_text  # noqa: E402

CAPTIONS = ("footage of {}.", "an athlete performing {}.", "a recording that shows {}.", "{} in progress.")
TRUSTED_SCORE = 0.5  # a detection at or above this is one a user would act on (docs/model.md "Scores")
LOW_SCORE = 0.3  # also reported: the share of negative videos with a detection at or above this
OPENAI_LOGIT_SCALE = math.log(100.0)


# ------------------------------------------------------------------------------------------------- the world


def clip_weights(name: str, out: Path) -> Path:
    """Seeded random weights of ``name`` with OpenAI's logit scale, as a local weights file."""
    import open_clip
    import torch

    path = out / f"{name}-random-scale100.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
        with torch.no_grad():
            model.logit_scale.fill_(OPENAI_LOGIT_SCALE)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def vocabulary() -> list[str]:
    """The 213 distinct class names shipped with stale (THUMOS14 and ActivityNet)."""
    names = []
    for dataset in ("thumos14", "activitynet13"):
        seen, unseen = load_split(f"{dataset}/75_25/0")
        names += seen + unseen
    return list(dict.fromkeys(names))


def text_directions(weights: Path, clip_model: str, classes: list[str]) -> dict[str, np.ndarray]:
    """Each class's caption embedding from the frozen tower, minus the direction all captions share: unit (D,)."""
    import open_clip
    import torch

    model = open_clip.create_model(clip_model, pretrained=None)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    tok = open_clip.get_tokenizer(clip_model)

    def embed(names: list[str]) -> np.ndarray:
        texts = [c.format(class_to_text(n)) for n in names for c in CAPTIONS]
        with torch.no_grad():
            e = model.encode_text(tok(texts)).float().numpy().reshape(len(names), len(CAPTIONS), -1)
        e /= np.linalg.norm(e, axis=-1, keepdims=True)
        e = e.mean(axis=1)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)  # (K, D)

    common = embed(vocabulary()).mean(axis=0)  # (D,)
    d = embed(classes) - common
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return dict(zip(classes, d))


def near_identity(dim: int, strength: float, rng) -> np.ndarray:
    """An orthogonal (D, D) matrix exp(strength * S) with S a random unit-norm (Frobenius) skew-symmetric matrix."""
    import torch

    a = rng.normal(size=(dim, dim))
    s = a - a.T
    s = strength * s / np.linalg.norm(s) * np.sqrt(dim)
    return torch.linalg.matrix_exp(torch.from_numpy(s)).numpy()


def prototypes(text: dict[str, np.ndarray], angle_deg: float, rotation: float, rng) -> dict[str, np.ndarray]:
    dim = len(next(iter(text.values())))
    R = near_identity(dim, rotation, rng)
    a = math.radians(angle_deg)
    out = {}
    for c in sorted(text):
        base = R @ text[c]
        r = rng.normal(size=dim)
        r -= (r @ base) * base  # residual orthogonal to the text part
        out[c] = math.cos(a) * base + math.sin(a) * r / np.linalg.norm(r)
    return out


class ActionnessGenerator(Generator):
    """quality.py's generator, with one direction shared by every action of every class (``strength`` x a unit
    vector drawn once) added to each instance's class part: a class-agnostic look of "an action happening", which
    a model trained on some classes can learn and lend to others."""

    def __init__(self, classes: list[str], dim: int, fps: float, seed: int, strength: float):
        super().__init__(classes, dim, fps, seed)
        v = np.random.default_rng(seed + 2000).standard_normal(dim)  # its own stream: the rest stays as it was
        self.shared = strength * v / np.linalg.norm(v)

    def _look(self, a: dict, earlier: list[dict]) -> np.ndarray:
        return super()._look(a, earlier) + self.shared


def build(args, out: Path) -> dict:
    """Annotations, CLIP weights, prototypes and feature files (kept on reruns with the same settings)."""
    key = {k: getattr(args, k) for k in ("seed", "train_videos", "test_videos", "max_duration", "fps", "clip_model",
                                         "residual_angle", "rotation")}
    if args.actionness:  # recorded only when set, so that worlds built before the option are still recognised
        key["actionness"] = args.actionness
    stamp = out / "world.json"
    if stamp.is_file():
        built = json.loads(stamp.read_text())
        if built.get("key") == key:
            return built
        if not args.rebuild:  # every work folder under --out was trained and read on the world built there
            old = built.get("key", {})
            differ = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
            sys.exit(f"error: {out} holds a world built with other settings ({', '.join(differ)}: "
                     f"{', '.join(repr(old.get(k)) for k in differ)}); give the same settings "
                     "(e.g. --actionness), another --out, or --rebuild to replace it")
    ann = select_videos(args)
    write_json_atomic(out / "annotations.json", ann)
    classes = sorted({a["label"] for v in ann["database"].values() for a in v["annotations"]})
    weights = clip_weights(args.clip_model, out.parent)
    text = text_directions(weights, args.clip_model, classes)
    rng = np.random.default_rng(args.seed + 1000)
    gen = ActionnessGenerator(classes, len(text[classes[0]]), args.fps, args.seed, args.actionness)
    gen.prototypes = prototypes(text, args.residual_angle, args.rotation, rng)
    feats = out / "features"
    write_feature_files(gen, ann, feats, args.fps, args.clip_model, str(weights))
    np.savez(out / "world.npz", mean=gen.mean, classes=np.array(classes),
             prototypes=np.stack([gen.prototypes[c] for c in classes]), text=np.stack([text[c] for c in classes]))
    world = {"key": key, "classes": classes, "weights": str(weights),
             "annotations": str(out / "annotations.json"), "features": str(feats),
             "text_prototype_cosine": float(np.mean([gen.prototypes[c] @ text[c] for c in classes]))}
    write_json_atomic(stamp, world)
    return world


# ----------------------------------------------------------------------------------------------- evaluation


def open_world(out: Path) -> tuple[dict, object, Path, dict]:
    """The world under ``out``: its world.json record, its CLIP (loaded on the CPU), its test features folder and
    their ground truth."""
    from stale_cli.features.clip_backbone import load_clip

    world = json.loads((out / "world.json").read_text())
    clip = load_clip(world["key"]["clip_model"], world["weights"], device="cpu")
    return world, clip, Path(world["features"]) / "test", ground_truth(Path(world["annotations"]))


def unseen_names(k: int, world: dict) -> list[str]:
    """The unseen names of split thumos14/75_25/k, as the world spells them."""
    from stale_cli.model.data.splits import load_split, match_classes

    return match_classes(load_split(f"thumos14/75_25/{k}")[1], world["classes"], "split")


def ground_truth(ann_path: Path) -> dict:
    ann = load_annotations(ann_path).select_subset("test")
    return {v.video_id: [(i.label, i.start, i.end) for i in v.instances] for v in ann.videos.values()}


def avg_map(gt: dict, preds: dict, classes: list[str]) -> float:
    return float(evaluate_detection(gt, preds, TIOUS, classes)["average_mAP"])


def curve_predictions(feats_dir: Path, classes: list[str], probs_of, **curve_kw) -> dict:
    """Detections of every feature file of ``feats_dir`` from its whole-video curves ``probs_of(x, meta) ->
    (T, K+1)`` (column k: ``classes[k]``, the last: the rest), through the product's whole-video post-processing
    (``curve_kw``: more arguments of ``segments_from_curve``)."""
    from stale_cli.model.data.windows import feature_timeline
    from stale_cli.sidecar import read_features

    cfg = DetectConfig()
    preds = {}
    for npy in sorted(feats_dir.glob("*.npy")):
        x, meta = read_features(npy)
        segs = segments_from_curve(probs_of(x, meta), feature_timeline(meta, len(x)), cfg, **curve_kw)
        preds[npy.stem] = [(classes[k], s, e, c) for k, s, e, c in finalize([segs], float(meta.duration), cfg)]
    return preds


def oracle_predictions(feats_dir: Path, directions: np.ndarray, mean: np.ndarray, classes: list[str]) -> dict:
    """Class curves from the projection of each row (offset removed) on ``directions`` (K, D), through the
    training-free post-processing on the whole video."""
    expected = 1.0  # the projection inside an instance, relative to the direction's own share of the prototype

    def probs_of(x, meta):
        proj = (x.astype(np.float32) - mean) @ directions.T  # (T, K)
        fg = 1 / (1 + np.exp(-12.0 * (proj / expected - 0.5)))
        return np.concatenate([fg, 1 - fg.max(1, keepdims=True)], axis=1)

    return curve_predictions(feats_dir, classes, probs_of)


def detector_predictions(detector, feats_dir: Path) -> dict:
    from stale_cli.detection.detect import detect_batch

    videos = []
    detect_batch(detector, sorted(feats_dir.glob("*.npy")), videos.append)
    return {v.video_id: [(s.label, s.start, s.end, s.score) for s in v.segments] for v in videos}


def single_name_figures(make_detector, feats_dir: Path, gt: dict, unseen: list[str]) -> dict:
    """Each unseen name alone on every test video: its AP, and on the videos where it never happens the share
    with a detection at or above TRUSTED_SCORE (and the highest score there)."""
    aps, negatives, low, top_neg, top_pos = [], [], [], [], []
    for name in unseen:
        preds = detector_predictions(make_detector([name]), feats_dir)
        aps.append(avg_map(gt, preds, [name]))
        neg = [v for v in gt if not any(lab == name for lab, _, _ in gt[v])]
        best = [max((d[3] for d in preds.get(v, [])), default=0.0) for v in neg]
        negatives.append(float(np.mean([b >= TRUSTED_SCORE for b in best])) if neg else 0.0)
        low.append(float(np.mean([b >= LOW_SCORE for b in best])) if neg else 0.0)
        top_neg.append(float(np.median(best)) if best else 0.0)
        pos = [max((d[3] for d in preds.get(v, [])), default=0.0) for v in gt if v not in neg]
        top_pos.append(float(np.median(pos)) if pos else 0.0)
    return {"single_name_ap": float(np.mean(aps)), "single_name_ap_per_name": dict(zip(unseen, aps)),
            "negative_share": float(np.mean(negatives)), "negative_share_low": float(np.mean(low)),
            "negative_median_top": float(np.mean(top_neg)),
            "positive_median_top": float(np.mean(top_pos))}


def shuffled(gt: dict, unseen: list[str]) -> dict:
    """The ground truth with each unseen class relabelled as the next one (a derangement of the names)."""
    nxt = {c: unseen[(i + 1) % len(unseen)] for i, c in enumerate(unseen)}
    return {v: [(nxt.get(lab, lab), s, e) for lab, s, e in inst] for v, inst in gt.items()}


def analyse_split(k: int, world: dict, work: Path, args, clip) -> dict:
    """The in-process figures of one split: oracles, single names, negatives, closed set, shuffled names."""
    from stale_cli.detection.detect import DetectSettings, Detector

    seen, unseen = load_split(f"thumos14/75_25/{k}")
    labels = world["classes"]
    from stale_cli.model.data.splits import match_classes

    seen, unseen = match_classes(seen, labels, "split"), match_classes(unseen, labels, "split")
    feats = Path(world["features"]) / "test"
    gt = ground_truth(Path(world["annotations"]))
    w = np.load(work.parent / "world.npz")
    index = {c: i for i, c in enumerate(w["classes"].tolist())}
    rows = [index[c] for c in unseen]
    res = {"seen": seen, "unseen": unseen}
    res["prototype_oracle"] = avg_map(gt, oracle_predictions(feats, w["prototypes"][rows], w["mean"], unseen), unseen)
    cos = float(np.mean(np.sum(w["prototypes"][rows] * w["text"][rows], axis=1)))
    text_dirs = w["text"][rows] / cos  # so that the projection inside an instance is ~1, as the oracle's
    res["text_oracle"] = avg_map(gt, oracle_predictions(feats, text_dirs, w["mean"], unseen), unseen)

    split_dir = work / f"split_{k}"
    ckpt = split_dir / "model.pt"
    modes = {"clip": dict(mode="clip", clip_model=args.clip_model, clip_weights=world["weights"])}
    if ckpt.is_file():
        modes["stale"] = dict(mode="stale", checkpoint=ckpt)
        # what each part of the open-vocabulary inference is worth: the classifier without frozen CLIP's prior,
        # and the paper's softmax over the names asked and the background
        modes["stale_model"] = dict(mode="stale", checkpoint=ckpt, new_names="stale")
        modes["stale_foreground"] = dict(mode="stale", checkpoint=ckpt, new_names="foreground")
        if args.all_variants:
            modes["stale_noprior"] = dict(mode="stale", checkpoint=ckpt, new_names="stale", prior_weight=0.0)
        modes["stale_paper"] = dict(mode="stale", checkpoint=ckpt, scoring="paper")
    for mode, kw in modes.items():
        if args.readings and mode not in args.readings:
            continue

        def make(classes, kw=kw):
            return Detector(DetectSettings(classes=classes, **kw), clip=clip if kw["mode"] == "clip" else None)

        together = detector_predictions(make(unseen), feats)
        res[f"{mode}_unseen"] = avg_map(gt, together, unseen)
        res[f"{mode}_shuffled"] = avg_map(shuffled(gt, unseen), together, unseen)
        res.update({f"{mode}_{key}": v for key, v in single_name_figures(make, feats, gt, unseen).items()})
        if mode == "clip":
            res["clip_closed_set"] = avg_map(gt, detector_predictions(make(seen), feats), seen)
        if mode == "stale_model":
            res["stale_closed_set"] = avg_map(gt, detector_predictions(make(seen), feats), seen)
    return res


def markdown(results: dict) -> str:
    splits = results["splits"]
    mean = lambda key: np.mean([results["per_split"][str(k)][key] for k in splits]) * 100  # noqa: E731
    has = lambda key: all(key in results["per_split"][str(k)] for k in splits)  # noqa: E731
    lines = [f"Splits thumos14/75_25/{','.join(map(str, splits))}; avg mAP % (tIoU 0.3:0.7), mean over splits.", "",
             "| row | unseen names together | each name alone | negative videos >= %.1f (>= %.1f) | top score, "
             "median: videos with / without the action | shuffled names |" % (TRUSTED_SCORE, LOW_SCORE),
             "|---|---|---|---|---|---|",
             f"| prototype oracle | {mean('prototype_oracle'):.1f} | | | | |",
             f"| text oracle | {mean('text_oracle'):.1f} | | | | |"]
    for mode, name in (("clip", "training-free"), ("stale", "STALE as shipped (new names: --new-names both)"),
                       ("stale_model", "STALE, new names through the trained model (--new-names stale)"),
                       ("stale_foreground", "STALE's where, frozen CLIP's names (--new-names foreground)"),
                       ("stale_noprior", "the same without frozen CLIP's prior (--prior-weight 0)"),
                       ("stale_paper", "STALE, the paper's K+1 softmax (--scoring paper)")):
        if has(f"{mode}_unseen"):
            lines.append(f"| {name} | {mean(f'{mode}_unseen'):.1f} | {mean(f'{mode}_single_name_ap'):.1f} | "
                         f"{mean(f'{mode}_negative_share'):.0f}% ({mean(f'{mode}_negative_share_low'):.0f}%) | "
                         f"{mean(f'{mode}_positive_median_top') / 100:.2f} / "
                         f"{mean(f'{mode}_negative_median_top') / 100:.2f} | {mean(f'{mode}_shuffled'):.1f} |")
    if has("clip_closed_set"):
        lines.append(f"| training-free, seen names (closed set) | {mean('clip_closed_set'):.1f} | | | | |")
    if has("stale_closed_set"):
        lines.append(f"| STALE, seen names (closed set) | {mean('stale_closed_set'):.1f} | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "zero_shot")
    ap.add_argument("--splits", default="0,1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clip-model", default="ViT-B-16")
    ap.add_argument("--train-videos", type=int, default=40)
    ap.add_argument("--test-videos", type=int, default=50)
    ap.add_argument("--max-duration", type=float, default=150.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--residual-angle", type=float, default=60.0, help="degrees between a prototype and its text")
    ap.add_argument("--rotation", type=float, default=0.02, help="strength of the shared near-identity rotation")
    ap.add_argument("--actionness", type=float, default=0.0,
                    help="norm of a direction shared by the actions of every class (0: none, the default world)")
    ap.add_argument("--rebuild", action="store_true",
                    help="replace a world built under --out with other settings (its work folders no longer fit it)")
    ap.add_argument("--no-train", action="store_true", help="training-free mode and oracles only")
    ap.add_argument("--train-args", default="", help="extra arguments for stale zero-shot (quoted)")
    ap.add_argument("--analyse-only", action="store_true", help="reuse the work dir's checkpoints and predictions")
    ap.add_argument("--all-variants", action="store_true", help="also STALE without frozen CLIP's prior")
    ap.add_argument("--readings", type=lambda s: s.split(","), default=None,
                    help="with --analyse-only: only these rows (clip,stale,stale_model,stale_foreground,stale_paper), "
                         "the split's other figures kept from its earlier analysis")
    ap.add_argument("--work", default="work", help="sub-folder of --out for this recipe's checkpoints and results")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    t0 = time.perf_counter()
    world = build(args, out)
    print(f"world: {len(world['classes'])} classes, text-prototype cosine {world['text_prototype_cosine']:.2f}",
          flush=True)
    splits = [int(s) for s in args.splits.split(",")]
    work = out / args.work
    if not args.analyse_only:
        run_cli("zero-shot", "--dataset", "thumos14", "--setting", "75_25", "--features", world["features"],
                "--annotations", world["annotations"], "--work-dir", str(work), "--splits", args.splits,
                "--clip-model", args.clip_model, "--clip-weights", world["weights"], "--device", args.device,
                "--no-progress", *(["--no-train"] if args.no_train else []), *args.train_args.split(), log=log)
    from stale_cli.features.clip_backbone import load_clip

    clip = load_clip(args.clip_model, world["weights"], device="cpu")
    part_file = work / f"results-{'_'.join(map(str, splits))}.json"
    earlier = json.loads(part_file.read_text())["per_split"] if args.readings and part_file.is_file() else {}
    per_split = {}
    for k in splits:
        per_split[str(k)] = {**earlier.get(str(k), {}), **analyse_split(k, world, work, args, clip)}
        print(json.dumps({key: v for key, v in per_split[str(k)].items() if isinstance(v, float)}), flush=True)
    part = {"splits": splits, "per_split": per_split, "seconds": time.perf_counter() - t0,
            "args": {k: str(v) for k, v in vars(args).items()}}
    write_json_atomic(part_file, part)
    # Splits may be analysed by separate runs (one per core): the table covers every split analysed so far.
    merged: dict = {}
    for f in sorted(work.glob("results-*.json")):
        merged.update(json.loads(f.read_text())["per_split"])
    results = {"splits": sorted(int(k) for k in merged), "per_split": merged, "trusted_score": TRUSTED_SCORE,
               "text_prototype_cosine": world["text_prototype_cosine"]}
    write_json_atomic(work / "results.json", results)
    table = markdown(results)
    (work / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
