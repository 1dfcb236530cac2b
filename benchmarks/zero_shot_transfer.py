"""What, learned on the seen names, carries to unseen ones? Light learners on top of frozen CLIP's reading.

    python benchmarks/zero_shot.py --no-train --splits 0 --out bench_out/zero_shot     # builds the world once
    python benchmarks/zero_shot_transfer.py --out bench_out/zero_shot --splits 0 \
        --variants none,prompt,offset,text-linear,visual-linear,refiner

Each variant is trained on the ``val`` videos of the zero-shot benchmark's world, with the seen names of the split
(unseen-class snippets left out of the loss, as ``stale train`` does), then read through the training-free
pipeline (video-mean removal, every other name as a distractor, whole-video curves, the product's
post-processing) on the ``test`` videos: the unseen names asked together, and the seen names (closed set).

- ``none``: the training-free mode as shipped (prompt-ensembled text), the figure to beat;
- ``prompt``: CoOp: one prompt whose context (initialised from "a video of a person") is learned through the
  frozen text tower, replacing the hand-made templates;
- ``offset``: a vector learned and subtracted from every name's ensembled text (a shared caption direction);
- ``text-linear`` / ``visual-linear``: ``t + A t`` on the text, ``x + V x`` on the snippet directions, A, V
  (D, D) learned from zero;
- ``refiner``: a dilated 1-D CNN over time that reads, per name, class-agnostic channels (the name's curve, its
  cosine, the probability of any name, the feature change and the distance from the video mean) and corrects the
  curve's logit; its last layer starts at zero, so untrained it is the training-free mode;
- ``seen-oracle``: not a learner but its upper bound for one use of training: the training-free mode with every
  snippet inside a ground-truth seen-class instance given to no asked name (what a model that recognised its
  training names perfectly could explain away). Reported for the unseen names only.

Printed: avg mAP % over tIoU 0.3:0.1:0.7 per variant and split, unseen and seen names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from zero_shot import avg_map, curve_predictions, ground_truth  # noqa: E402

from stale_cli.detection.clipmode import (  # noqa: E402
    ClipModeConfig,
    class_text_features,
    normalize_rows,
    snippet_directions,
    snippet_probabilities,
)
from stale_cli.features.clip_backbone import load_clip  # noqa: E402
from stale_cli.model.data.splits import load_split, match_classes  # noqa: E402
from stale_cli.model.data.windows import feature_timeline  # noqa: E402
from stale_cli.sidecar import read_features  # noqa: E402
from stale_cli.vocab import distractors  # noqa: E402

VARIANTS = ("none", "prompt", "offset", "text-linear", "visual-linear", "refiner", "seen-oracle")
BATCH = 4096  # snippets per step for the text/visual learners


def instance_rows(ann: dict, vid: str, t: np.ndarray):
    """(label, rows inside) for each instance of ``vid``."""
    for a in ann[vid]["annotations"]:
        s, e = a["segment"]
        yield a["label"], (t >= s) & (t <= e)


class Split:
    """One split's names, frozen text, training snippets and the test videos' figures."""

    def __init__(self, world: dict, k: int, clip):
        import torch

        self.world, self.clip = world, clip
        seen, unseen = load_split(f"thumos14/75_25/{k}")
        self.seen = match_classes(seen, world["classes"], "split")
        self.unseen = match_classes(unseen, world["classes"], "split")
        self.ann = json.loads(Path(world["annotations"]).read_text())["database"]
        self.feats = Path(world["features"])
        self.train_names = self.seen + distractors(self.seen)  # what training can compare with
        names = list(dict.fromkeys(self.train_names + self.unseen + distractors(self.unseen, self.seen)))
        self.text = dict(zip(names, class_text_features(clip, names)))  # name -> (D,) ensembled, frozen
        xs, ys = [], []
        for npy in sorted((self.feats / "val").glob("*.npy")):
            x, meta = read_features(npy)
            y = np.full(len(x), len(self.train_names))  # background
            for label, rows in instance_rows(self.ann, npy.stem, np.asarray(meta.timestamps)):
                y[rows] = self.seen.index(label) if label in self.seen else -1  # unseen: out of the loss
            xs.append(snippet_directions(x, 1.0))
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        self.x, self.y = torch.from_numpy(x[y >= 0]), torch.from_numpy(y[y >= 0])
        self.gt = ground_truth(Path(world["annotations"]))

    def text_rows(self, names: list[str]) -> np.ndarray:
        return np.stack([self.text[n] for n in names])

    def class_weights(self):
        """Cross-entropy weights: the background class down to the foreground's total share."""
        import torch

        w = torch.ones(len(self.train_names) + 1)
        w[-1] = float((self.y < len(self.seen)).sum() / (self.y == len(self.train_names)).sum())
        return w

    def evaluate(self, names: list[str], extra: list[str], read) -> float:
        """avg mAP % of ``names`` (with ``extra`` + generic distractors) on the test videos; ``read(x, meta, rows,
        K) -> probs (T, K+1)``. Segments as the training-free mode cuts them (its window length as the block)."""
        rows = names + distractors(names, extra)
        preds = curve_predictions(self.feats / "test", names, lambda x, meta: read(x, meta, rows, len(names)),
                                  block=128)
        return 100 * avg_map(self.gt, preds, names)


def training_free(split: Split, text_of, visual=None):
    """The training-free reading with text ``text_of(rows) -> (R, D)``, the snippet directions through ``visual``
    (None: exactly the shipped mode)."""

    def read(x, meta, rows, K):
        cfg = ClipModeConfig()
        if visual is not None:
            x, cfg = visual(snippet_directions(x, cfg.video_mean)), ClipModeConfig(video_mean=0.0)
        return snippet_probabilities(x, text_of(rows), 1.0 / feature_timeline(meta, len(x)).step, cfg, num_query=K)

    return read


def seen_oracle(split: Split):
    """The training-free reading, asked names zeroed inside the ground truth's seen-class instances."""
    plain = training_free(split, split.text_rows)

    def read(x, meta, rows, K):
        probs = plain(x, meta, rows, K)
        vid = meta.source.split(":", 1)[1]  # "synthetic:<video id>" (zero_shot.py's feature files)
        inside = np.zeros(len(x), bool)
        for label, rows_in in instance_rows(split.ann, vid, np.asarray(meta.timestamps)):
            inside |= rows_in & (label in split.seen)
        probs[inside, :K] = 0.0
        probs[:, K] = 1.0 - probs[:, :K].sum(axis=1)
        return probs

    return read


def fit_linear(split: Split, variant: str, steps: int):
    """offset / text-linear / visual-linear, trained with the training-free mode's logits (scale 100, level 0)."""
    import torch

    D = split.x.shape[1]
    b, A, V = (torch.zeros(D, requires_grad=True), torch.zeros(D, D, requires_grad=True),
               torch.zeros(D, D, requires_grad=True))
    params = {"offset": [b], "text-linear": [A], "visual-linear": [V]}[variant]
    opt = torch.optim.Adam(params, lr=1e-3)
    t0 = torch.from_numpy(split.text_rows(split.train_names))
    weights = split.class_weights()
    for _ in range(steps):
        t = t0 - b + t0 @ A
        t = t / t.norm(dim=-1, keepdim=True)
        idx = torch.randint(0, len(split.y), (BATCH,))
        x = split.x[idx] + split.x[idx] @ V
        logits = 100 * torch.cat([x @ t.T, torch.zeros(len(idx), 1)], dim=1)
        loss = torch.nn.functional.cross_entropy(logits, split.y[idx], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    b, A, V = (p.detach().numpy() for p in (b, A, V))
    return training_free(split, lambda rows: normalize_rows((lambda t: t - b + t @ A)(split.text_rows(rows))),
                         lambda d: d + d @ V)


def fit_prompt(split: Split, steps: int):
    """CoOp: the context of one prompt learned through the frozen text tower."""
    import torch

    from stale_cli.model.text_encoder import PromptedTextEncoder

    enc = PromptedTextEncoder(split.clip.model, "ViT-B-16", 0, 0.02, True, "a video of a person")
    opt = torch.optim.Adam([enc.context], lr=2e-3)
    seen = split.seen
    y = torch.where(split.y < len(seen), split.y, torch.full_like(split.y, len(seen)))  # seen names + background
    weights = torch.ones(len(seen) + 1)
    weights[-1] = float((y < len(seen)).sum() / (y == len(seen)).sum())
    for _ in range(steps):
        t = enc(seen)[:-1]
        t = t / t.norm(dim=-1, keepdim=True)
        idx = torch.randint(0, len(y), (BATCH,))
        logits = 100 * torch.cat([split.x[idx] @ t.T, torch.zeros(len(idx), 1)], dim=1)
        loss = torch.nn.functional.cross_entropy(logits, y[idx], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()

    cache = {}

    def text_of(rows):  # the same rows for every video of a query: encoded once
        if tuple(rows) not in cache:
            with torch.no_grad():
                cache[tuple(rows)] = normalize_rows(enc(rows)[:-1].numpy())
        return cache[tuple(rows)]

    return training_free(split, text_of)


def refiner_channels(split: Split, x: np.ndarray, meta: dict, rows: list[str], K: int):
    """(K, 5, T) class-agnostic channels of the K names asked, and the training-free probabilities (T, K+1)."""
    cfg = ClipModeConfig()
    text = split.text_rows(rows)
    fps = 1.0 / feature_timeline(meta, len(x)).step
    probs = snippet_probabilities(x, text, fps, cfg, num_query=K)  # (T, K+1)
    any_name = 1 - snippet_probabilities(x, text, fps, cfg)[:, -1]  # (T,) some name, asked or not
    d = snippet_directions(x, 1.0)
    u = normalize_rows(x.astype(np.float32))
    change = np.r_[0.0, 1 - np.sum(u[1:] * u[:-1], axis=1)]  # (T,)
    dist = np.linalg.norm(d, axis=1)
    T = len(x)
    shared = [np.broadcast_to(c, (K, T)) for c in (any_name, 10 * change, dist - dist.mean())]
    return np.stack([probs[:, :K].T, 10 * (d @ text[:K].T).T, *shared], axis=1).astype(np.float32), probs


def fit_refiner(split: Split, epochs: int):
    import torch
    from torch import nn

    def conv(i, o, dil):
        return nn.Conv1d(i, o, 9, padding=4 * dil, dilation=dil)

    net = nn.Sequential(conv(5, 32, 1), nn.ReLU(), conv(32, 32, 2), nn.ReLU(), conv(32, 32, 4), nn.ReLU(),
                        conv(32, 32, 8), nn.ReLU(), nn.Conv1d(32, 1, 1))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)

    def logit(ch):  # the curve's own logit, corrected: (K, T)
        p = ch[:, 0].clamp(1e-4, 1 - 1e-4)
        return torch.log(p / (1 - p)) + net(ch).squeeze(1)

    seen = split.seen
    rows = seen + distractors(seen)
    data = []
    for npy in sorted((split.feats / "val").glob("*.npy")):
        x, meta = read_features(npy)
        ch, _ = refiner_channels(split, x, meta, rows, len(seen))
        target = np.zeros((len(seen), len(x)), np.float32)
        keep = np.ones(len(x), np.float32)
        for label, inside in instance_rows(split.ann, npy.stem, np.asarray(meta.timestamps)):
            if label in seen:
                target[seen.index(label), inside] = 1
            else:
                keep[inside] = 0  # unseen-class snippets: out of the loss
        data.append(tuple(map(torch.from_numpy, (ch, target, keep))))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(epochs):
        for i in torch.randperm(len(data)).tolist():
            ch, target, keep = data[i]
            loss = (nn.functional.binary_cross_entropy_with_logits(logit(ch), target, reduction="none") * keep).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def read(x, meta, rows, K):
        ch, _ = refiner_channels(split, x, meta, rows, K)
        with torch.no_grad():
            p = torch.sigmoid(logit(torch.from_numpy(ch))).numpy().T  # (T, K)
        p = p / np.maximum(1.0, p.sum(axis=1, keepdims=True))
        return np.concatenate([p, 1 - p.sum(axis=1, keepdims=True)], axis=1)

    return read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the --out of benchmarks/zero_shot.py")
    ap.add_argument("--splits", default="0")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=300, help="steps of the text/visual/prompt learners")
    ap.add_argument("--epochs", type=int, default=15, help="epochs of the refiner")
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    world = json.loads((args.out / "world.json").read_text())
    clip = load_clip("ViT-B-16", world["weights"], device="cpu", precision="fp32")
    for k in map(int, args.splits.split(",")):
        split = Split(world, k, clip)
        for variant in args.variants.split(","):
            t0 = time.time()
            if variant == "none":
                read = training_free(split, split.text_rows)
            elif variant == "prompt":
                read = fit_prompt(split, args.steps)
            elif variant == "seen-oracle":
                read = seen_oracle(split)
            elif variant == "refiner":
                read = fit_refiner(split, args.epochs)
            elif variant in VARIANTS:
                read = fit_linear(split, variant, args.steps)
            else:
                raise SystemExit(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
            unseen = split.evaluate(split.unseen, split.seen, read)
            seen = split.evaluate(split.seen, [], read) if variant != "seen-oracle" else float("nan")
            print(f"split {k} {variant}: unseen {unseen:.1f}, seen {seen:.1f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
