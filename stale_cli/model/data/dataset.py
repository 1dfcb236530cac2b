"""Annotated videos + their feature files -> a torch Dataset of labelled windows.

Features are those written by ``stale extract-features`` (``<video_id>.npy`` + ``.json`` sidecar, docs/formats.md),
found anywhere below the features directory. Annotated videos without a feature file are counted and skipped
(:class:`VideoSet` reports how many); none at all, or no training window left, is a DataError. Features are kept
in memory as float16 (as on disk) and each window is cut when it is read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from stale_cli.errors import DataError, InputError
from stale_cli.model.data.annotations import VideoAnnotation
from stale_cli.model.data.windows import (DataConfig, Window, assign_labels, center_video, feature_timeline,
                                         plan_windows, shifted, snippets_inside, window_features)
from stale_cli.sidecar import FeatureMeta, read_features

log = logging.getLogger(__name__)


def index_features(features_dir: str | Path) -> dict[str, Path]:
    """``video_id -> <video_id>.npy`` for every feature file below ``features_dir`` (searched recursively, through
    links to directories; a broken link is logged as a warning)."""
    from stale_cli.inputs import walk_files

    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise InputError(f"{features_dir}: features directory not found")
    index: dict[str, Path] = {}

    def broken(link: Path) -> None:
        log.warning("%s: broken symbolic link (points to %s, which does not exist); skipped", link, os.readlink(link))

    for p in sorted((p for p in walk_files(features_dir, broken) if p.suffix == ".npy"), key=lambda p: p.as_posix()):
        if p.stem in index:
            raise DataError(f"two feature files for video {p.stem!r}: {index[p.stem]} and {p}; keep one")
        index[p.stem] = p
    return index


@dataclass
class VideoSet:
    """The annotated videos that have features: features (float16), sidecar meta and annotation per video."""

    videos: list[VideoAnnotation]
    features: dict[str, np.ndarray]  # video_id -> (T_total, D) float16
    meta: dict[str, FeatureMeta]  # video_id -> sidecar
    missing: list[str] = field(default_factory=list)  # annotated video ids without a feature file

    @property
    def feature_dim(self) -> int:
        return next(iter(self.features.values())).shape[1]

    def feature_fps(self) -> float:
        """The rate the features were extracted at (before any resize to T)."""
        return next(iter(self.meta.values())).source_fps

    def clip_models(self) -> set[str]:
        return {m.clip_model for m in self.meta.values() if m.clip_model}

    def subset(self, ids: list[str]) -> "VideoSet":
        keep = set(ids)
        return VideoSet(
            [v for v in self.videos if v.video_id in keep],
            {k: f for k, f in self.features.items() if k in keep},
            {k: m for k, m in self.meta.items() if k in keep},
        )


def _resized(feats: np.ndarray, meta: FeatureMeta, cfg: DataConfig) -> tuple[np.ndarray, FeatureMeta]:
    """Resize mode keeps only each video's (T, D) input, with a sidecar that makes it its own identity resize.

    Its T rows are the snippets of ``duration / T`` s from 0, so cutting it again with ``cfg`` gives the same
    window; ActivityNet's 10k videos then take T rows each in memory instead of all their frames.
    """
    (w,) = plan_windows(feats.shape[0], meta, cfg)
    x = window_features(feats, meta, w, cfg)  # (T, D)
    step = w.timeline.step
    # Row i stands for the snippet centred at (i + 0.5) * step (feature_timeline's convention).
    return x, meta.replace(fps=1.0 / step, timestamps=(0.5 * step,), duration=step * cfg.num_snippets,
                           extracted_fps=meta.fps)


def load_video_set(features_dir: str | Path, videos: list[VideoAnnotation], cfg: DataConfig | None = None) -> VideoSet:
    """Load the features of ``videos``; skip (and count) those without a feature file.

    With a resize-mode ``cfg`` only each video's resized input is kept (see :func:`_resized`). A corrupt feature
    file -> DataError naming it. Videos whose features disagree in width or rate -> DataError.
    """
    index = index_features(features_dir)
    found = [v for v in videos if v.video_id in index]
    missing = [v.video_id for v in videos if v.video_id not in index]
    if not found:
        raise DataError(
            f"none of the {len(videos)} annotated videos has a feature file in {features_dir} "
            f"(expected e.g. {videos[0].video_id + '.npy' if videos else '<video_id>.npy'}); "
            "run `stale extract-features` on the videos first"
        )
    if missing:
        log.warning("%d of %d annotated videos have no features in %s; training on the other %d",
                    len(missing), len(videos), features_dir, len(found))
    features, meta = {}, {}
    for v in found:
        feats, m = read_features(index[v.video_id])  # corrupt file -> DataError naming it
        if cfg is not None:
            feats = center_video(feats, cfg.video_mean)  # on the whole video, before any window or resize
        if cfg is not None and cfg.mode == "resize":
            feats, m = _resized(feats, m, cfg)
        features[v.video_id], meta[v.video_id] = feats.astype(np.float16), m
    dims = {f.shape[1] for f in features.values()}
    if len(dims) > 1:
        raise DataError(f"feature files in {features_dir} have different widths {sorted(dims)}; use one extractor")
    rates = {round(m.source_fps, 6) for m in meta.values()}
    if len(rates) > 1:
        raise DataError(f"feature files in {features_dir} have different fps {sorted(rates)}; extract at one rate")
    return VideoSet(found, features, meta, missing)


def video_instances(video: VideoAnnotation, class_names: list[str]) -> list[tuple[float, float, int]]:
    """Instances of the training vocabulary as ``(start_s, end_s, class_index)``; other classes are dropped."""
    index = {c: i for i, c in enumerate(class_names)}
    return [(i.start, i.end, index[i.label]) for i in video.instances if i.label in index]


def unseen_spans(video: VideoAnnotation, class_names: list[str]) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of the instances whose class is outside the training vocabulary (to be ignored)."""
    known = set(class_names)
    return [(i.start, i.end) for i in video.instances if i.label not in known]


def foreground_rows(vs: VideoSet, class_names: list[str], ignore_unseen: bool = True
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per video of ``vs``: (features (N, D), foreground target (N,), keep (N,) bool) for every feature row, a row
    being foreground when it is a snippet of an instance of ``class_names`` (the rule of ``assign_labels``). With
    ``ignore_unseen`` the rows of other classes' instances are not kept (as the training losses leave them out);
    otherwise they are background. What the context foreground (stale_cli/model/context.py) is fitted on."""
    out = []
    for v in vs.videos:
        feats = vs.features[v.video_id]
        timeline = feature_timeline(vs.meta[v.video_id], feats.shape[0])
        every = np.ones(feats.shape[0], bool)  # (N,): a whole video has no padding
        fg, keep = ~every, every.copy()
        for start, end, _ in video_instances(v, class_names):
            fg |= snippets_inside(timeline, every, start, end)
        for start, end in unseen_spans(v, class_names) if ignore_unseen else []:
            keep &= ~snippets_inside(timeline, every, start, end)
        out.append((feats, fg.astype(np.float32), keep | fg))
    return out


class WindowDataset(Dataset):
    """Labelled windows of a :class:`VideoSet`; items are dicts of tensors (see :func:`collate_windows`).

    ``training=True`` drops the windows that hold no training-class instance but some unseen-class one (their
    only supervision would be the background around an unseen action), and, in window mode, all but
    ``cfg.empty_window_keep`` of the other windows without any foreground snippet (chosen with ``seed``).
    ``training=False`` keeps every window (validation, detection). In training, window mode, each read moves
    the window by up to ``cfg.jitter`` of the stride (:func:`~stale_cli.model.data.windows.shifted`).
    """

    def __init__(self, vs: VideoSet, class_names: list[str], cfg: DataConfig, training: bool = True, seed: int = 0,
                 ignore_unseen: bool = True):
        """``ignore_unseen``: instances of classes outside ``class_names`` are left out of every loss term (the
        default); False calls them background (strict open-vocabulary training)."""
        self.vs, self.cfg, self.num_classes = vs, cfg, len(class_names)
        self.max_shift = round(cfg.jitter * cfg.stride) if training and cfg.mode == "window" else 0
        rng = np.random.default_rng(seed)
        self.items: list[tuple[str, Window, list[tuple[float, float, int]], list[tuple[float, float]]]] = []
        self.window_classes: list[frozenset[int]] = []  # training classes with a snippet in each window (as planned)
        dropped = unseen_only = 0
        for v in vs.videos:
            inst = video_instances(v, class_names)
            unseen = unseen_spans(v, class_names) if ignore_unseen else []
            for w in plan_windows(vs.features[v.video_id].shape[0], vs.meta[v.video_id], cfg):
                if training:
                    t = assign_labels(w.timeline, w.valid_len, inst, self.num_classes, unseen)
                    if not (t["labels"] < self.num_classes).any():
                        if t["ignore"].any():
                            unseen_only += 1
                            continue
                        if cfg.mode == "window" and rng.random() >= cfg.empty_window_keep:
                            dropped += 1
                            continue
                    held = t["labels"][t["labels"] < self.num_classes]
                    self.window_classes.append(frozenset(int(c) for c in held))
                else:
                    self.window_classes.append(frozenset())
                self.items.append((v.video_id, w, inst, unseen))
        if training and (dropped or unseen_only):
            log.info("kept %d windows; dropped %d without any action and %d holding only unseen-class actions",
                     len(self.items), dropped, unseen_only)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        vid, w, inst, unseen = self.items[i]
        labels_of = lambda win: assign_labels(win.timeline, win.valid_len, inst, self.num_classes, unseen)  # noqa: E731
        if self.max_shift:  # drawn from torch's generator: reproducible from the run's seed
            shift = int(torch.randint(-self.max_shift, self.max_shift + 1, ()))
            moved = shifted(w, self.vs.features[vid].shape[0], shift, self.cfg)
            t = labels_of(moved)
            # A window kept for its actions (window_classes) keeps them: a shift that moves every one out is not taken.
            if (t["labels"] < self.num_classes).any() or not self.window_classes[i]:
                w = moved
            else:
                t = labels_of(w)
        else:
            t = labels_of(w)
        x = window_features(self.vs.features[vid], self.vs.meta[vid], w, self.cfg)  # (T, D)
        return {
            "features": torch.from_numpy(x),
            "valid": torch.from_numpy(t["valid"]),
            "labels": torch.from_numpy(t["labels"]),
            "also": torch.from_numpy(t["also"]),
            "masks": torch.from_numpy(t["masks"]),
            "fg": torch.from_numpy(t["fg"]),
            "ignore": torch.from_numpy(t["ignore"]),
            "index": torch.tensor(i),
        }


def collate_windows(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items: features (B,T,D), valid (B,T) bool, labels and also (B,T) long, masks (B,T,T), fg (B,T),
    ignore (B,T) bool, index (B,)."""
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def repeat_factors(window_classes: list[frozenset[int]], num_classes: int) -> np.ndarray:
    """Repeat factor of each window for class-balanced sampling (LVIS's repeat factor sampling, Gupta et al. 2019).

    f(c) = share of windows holding class c; r(c) = max(1, sqrt(t / f(c))) with t = 1 / K (a class in fewer than
    its even share of the windows is drawn more often); a window's factor is the largest r(c) of its classes, 1 for
    a window without any. Among 20 classes, one seen in 4 of 127 windows is drawn ~1.26x as often, in 1 ~2.5x.
    """
    n = len(window_classes)
    counts = np.zeros(num_classes)
    for cs in window_classes:
        for c in cs:
            counts[c] += 1
    t = 1.0 / max(num_classes, 1)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(t / (counts / max(n, 1))))  # inf for absent classes, never read
    return np.array([max((per_class[c] for c in cs), default=1.0) for cs in window_classes])


class RepeatFactorSampler(torch.utils.data.Sampler):
    """Each epoch, window i is drawn floor(r_i) times plus once more with probability frac(r_i), shuffled; the
    epoch is cut or topped up (by draws proportional to r) to a fixed length round(sum r), so the learning-rate
    schedule knows the number of steps. Under ``world`` processes every rank draws the same order (seeded by
    ``seed`` and the epoch) and reads every ``world``-th index from ``rank``."""

    def __init__(self, factors: np.ndarray, seed: int = 0, rank: int = 0, world: int = 1):
        self.factors, self.seed, self.rank, self.world, self.epoch = np.asarray(factors, float), seed, rank, world, 0
        total = max(int(round(self.factors.sum())), 1)
        self.per_rank = -(-total // world)  # ceil: every rank takes the same number of steps
        self.total = self.per_rank * world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        r = self.factors
        counts = np.floor(r).astype(int) + (rng.random(len(r)) < r - np.floor(r))
        order = np.repeat(np.arange(len(r)), counts)
        if len(order) < self.total:
            order = np.concatenate([order, rng.choice(len(r), self.total - len(order), p=r / r.sum())])
        order = rng.permutation(order)[: self.total]
        return iter(order[self.rank :: self.world].tolist())
