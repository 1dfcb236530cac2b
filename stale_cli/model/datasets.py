"""What stale knows about each benchmark dataset, in one frozen record per dataset.

A record holds the dataset's annotation subsets (train on, evaluate on), its tIoU thresholds, the data, training
and detection presets, and the paper's Table 1 numbers the zero-shot protocol prints beside its own. Everything
else (``stale train --preset``, ``stale zero-shot --dataset``, the split files, ``stale evaluate``'s defaults,
checkpoints) looks a dataset up here by its name.

Each dataset has one name: ``thumos14`` and ``activitynet13`` (ActivityNet v1.3, the name of its split files).
``activitynet`` is accepted on input as another spelling of ``activitynet13`` (the ``--preset`` value of earlier
versions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stale_cli.errors import InputError
from stale_cli.model.config import TrainConfig
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.postprocess import DetectConfig


@dataclass(frozen=True)
class Dataset:
    name: str  # the one name: split names (<name>/<ratio>/<k>), the split files' folder, checkpoints
    train_subset: str  # annotation subset the zero-shot protocol trains on
    test_subset: str  # annotation subset it detects and evaluates on (ActivityNet's "testing" has no labels)
    tious: tuple[float, ...]  # evaluation thresholds
    data: DataConfig  # how videos become model inputs (paper §4: T=256 windows, T=100 whole video)
    train: TrainConfig
    detect: DetectConfig  # inference settings a checkpoint trained on the dataset records
    # Paper Table 1 (STALE, CLIP ViT-B/16, mean of 10 splits): setting -> {tIoU: mAP in %}, -1 the average.
    paper: dict[str, dict[float, float]]


# THUMOS14 thresholds as listed by the THUMOS/ActionFormer/AFSD evaluations; ActivityNet's are the official
# default ``np.linspace(0.5, 0.95, 10)`` (kept as linspace values so a threshold compares exactly as there).
THUMOS14 = Dataset(
    name="thumos14",
    train_subset="val",
    test_subset="test",
    tious=(0.3, 0.4, 0.5, 0.6, 0.7),
    data=DataConfig(mode="window", num_snippets=256, overlap=0.5),
    train=TrainConfig(),
    detect=DetectConfig(),
    paper={
        "75_25": {0.3: 40.5, 0.4: 32.3, 0.5: 23.5, 0.6: 15.3, 0.7: 7.6, -1: 23.8},
        "50_50": {0.3: 38.3, 0.4: 30.7, 0.5: 21.2, 0.6: 13.8, 0.7: 7.0, -1: 22.2},
    },
)
ACTIVITYNET = Dataset(
    name="activitynet13",
    train_subset="training",
    test_subset="validation",
    tious=tuple(float(x) for x in np.linspace(0.5, 0.95, 10)),
    data=DataConfig(mode="resize", num_snippets=100, overlap=0.0),
    train=TrainConfig(),
    detect=DetectConfig(top_k=100, nms_sigma=0.75),  # ActivityNet's convention: 100 segments per video
    paper={
        "75_25": {0.5: 38.2, 0.75: 25.2, 0.95: 6.0, -1: 24.9},
        "50_50": {0.5: 32.1, 0.75: 20.7, 0.95: 5.9, -1: 20.5},
    },
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (THUMOS14, ACTIVITYNET)}
ALIASES = {"activitynet": ACTIVITYNET.name}  # other spellings accepted on input


def get(name: str, flag: str = "dataset") -> Dataset:
    """The record of ``name`` (or of an alias of it); InputError naming ``flag`` and the choices otherwise."""
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise InputError(f"{flag} must be one of {', '.join(DATASETS)}, not {name!r}")
    return DATASETS[key]


def for_data_config(cfg: DataConfig) -> Dataset:
    """The dataset a data configuration was made for, for checkpoints that do not name theirs: whole-video
    resizing is ActivityNet's, sliding windows THUMOS14's."""
    return ACTIVITYNET if cfg.mode == "resize" else THUMOS14


def for_test_subset(subset: str) -> Dataset:
    """The dataset whose evaluation subset is ``subset`` (THUMOS14 for ``test``); ActivityNet for any other."""
    return next((d for d in DATASETS.values() if d.test_subset == subset), ACTIVITYNET)
