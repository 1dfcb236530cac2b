"""The zero-shot protocol in one run: the paper's Table 1 row for a dataset and a seen/unseen setting.

For each standard split ``<dataset>/<setting>/<k>`` (docs/formats.md, docs/zero-shot.md):

1. **train** STALE on the *seen* classes of the training subset (THUMOS14 ``val``, ActivityNet ``training``) with
   :func:`stale_cli.model.train.train`; instances of unseen classes are left out of every loss term there
   (``--unseen-as-background`` makes them background);
2. **detect** on every test-subset video (THUMOS14 ``test``, ActivityNet ``validation``) with the *unseen* class
   names only, through :class:`stale_cli.detection.detect.Detector` with the split's checkpoint, read three
   ways: as `stale detect` reads names a checkpoint never saw by default (``--new-names both``: frozen CLIP's
   reading or the model's foreground and masks with frozen CLIP naming the class), the trained model alone
   (``--new-names stale``, the paper's STALE row), and the model's foreground and masks with frozen CLIP naming the
   class (``--new-names foreground``); frozen CLIP alone (``--new-names clip``) is the baseline row of step 4;
3. **evaluate** on the unseen classes (:func:`stale_cli.metric.evaluate_detection`, the official ActivityNet
   mAP) against *all* test-subset videos: a video without features, or whose detection failed, is a miss;
4. the same detection and evaluation in the **training-free mode** (CLIP similarity, no training), the baseline
   row every trained checkpoint must beat.

**Your own splits** (``ProtocolConfig.unseen_sets``, ``stale zero-shot --unseen-file``): each split is a list of
unseen names, the seen classes are every other label of the training subset, and the dataset only lends its
preset (subsets, tIoUs, windows). On a user's own annotated footage this answers what the standard splits answer
on the benchmarks: does a checkpoint trained on some names help on others, and which ``--new-names`` reading
should ``stale detect`` use there.

The row is the mean ± standard deviation (population, ``np.std``) over the splits of mAP at each tIoU and of the
average mAP, in percent, written to ``<work_dir>/results.json`` and ``results.md``.

Resumable: everything a split produces lives in ``<work_dir>/split_<k>/`` and is written atomically, last the
``<method>_eval.json`` that marks the split done for that method; a rerun skips what is done, resumes training
from ``model.last.pt`` and redoes only what is missing. ``<work_dir>/protocol.json`` records the settings; a rerun
with other settings in the same work dir is refused (the row would mix two experiments).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from stale_cli.errors import DataError, InputError, StaleError
from stale_cli.evaluation.evaluate import ground_truth, parse_predictions
from stale_cli.fileio import missing_dirs, read_json_or_none, write_json_atomic, write_text_atomic
from stale_cli.metric import evaluate_detection
from stale_cli.model.data.annotations import load_annotations
from stale_cli.model.data.splits import NUM_SPLITS, RATIOS, class_key, load_split, match_classes
from stale_cli.model.datasets import DATASETS, Dataset, get as get_dataset
from stale_cli.vocab import check_classes, read_name_lines

log = logging.getLogger(__name__)

# Each row is named after the `stale detect --new-names` reading of the unseen names it measures.
STALE_METHOD = "stale"
CLIP_METHOD = "clip"
FOREGROUND_METHOD = "foreground"
BOTH_METHOD = "both"
TRAINED_METHODS = (BOTH_METHOD, STALE_METHOD, FOREGROUND_METHOD)  # the readings of a split's checkpoint
METHODS = (CLIP_METHOD, *TRAINED_METHODS)
METHOD_NAMES = {CLIP_METHOD: "training-free CLIP (baseline)", BOTH_METHOD: "STALE as shipped",
                STALE_METHOD: "STALE", FOREGROUND_METHOD: "STALE's where, CLIP's names"}
# What each row is in `stale detect` terms, printed under the table.
METHOD_NOTES = {
    CLIP_METHOD: "frozen CLIP alone, as the training-free mode reads any name (--new-names clip)",
    BOTH_METHOD: "what `stale detect` gives names a checkpoint never saw: frozen CLIP's reading or the model's "
                 "foreground with frozen CLIP's class (--new-names both, the default)",
    STALE_METHOD: "the trained model reads the new names (--new-names stale); the paper's row",
    FOREGROUND_METHOD: "the model's foreground and masks, frozen CLIP's class (--new-names foreground)",
}


def row_notes(summary: dict) -> list[str]:
    """One line per row of ``summary`` saying what it is."""
    return [f"{row['name']}: {METHOD_NOTES[m]}" for m, row in summary["rows"].items() if m in METHOD_NOTES]


CUSTOM_SETTING = "own"  # the setting of a run on the user's own splits (``ProtocolConfig.unseen_sets``)


@dataclass(frozen=True)
class ProtocolConfig:
    dataset: str  # thumos14 | activitynet13 (stale_cli.model.datasets; an alias is replaced by the name)
    setting: str = "75_25"  # 75_25 | 50_50 (seen % _ unseen %); CUSTOM_SETTING with unseen_sets
    splits: Optional[tuple[int, ...]] = None  # None: every split (the 10 standard ones, or every unseen set)
    train_subset: Optional[str] = None  # None: the dataset's (THUMOS14 val, ActivityNet training)
    test_subset: Optional[str] = None  # None: the dataset's (THUMOS14 test, ActivityNet validation)
    tious: Optional[tuple[float, ...]] = None  # None: the dataset's
    baseline: bool = True  # also run the training-free mode on each split
    train: bool = True  # train and evaluate STALE (False: baseline only)
    # The user's own splits: split k's unseen class names (the seen ones: every other training-subset label).
    unseen_sets: Optional[tuple[tuple[str, ...], ...]] = None
    unseen_source: str = ""  # where unseen_sets came from (a file name), for messages and the table's title

    def __post_init__(self):
        object.__setattr__(self, "dataset", get_dataset(self.dataset, "--dataset").name)
        if self.unseen_sets is not None:
            if not self.unseen_sets or not all(self.unseen_sets):
                raise InputError("own splits: each split needs at least one unseen class name")
            object.__setattr__(self, "unseen_sets", tuple(tuple(u) for u in self.unseen_sets))
            object.__setattr__(self, "setting", CUSTOM_SETTING)
        elif self.setting not in RATIOS:
            raise InputError(f"--setting must be one of {', '.join(RATIOS)}, not {self.setting!r}")
        if self.splits is None:
            object.__setattr__(self, "splits", tuple(range(self.num_splits)))
        bad = [k for k in self.splits if not 0 <= k < self.num_splits]
        if bad or not self.splits:
            raise InputError(f"splits must be in 0-{self.num_splits - 1}, got {list(self.splits)}")
        if not (self.baseline or self.train):
            raise InputError("nothing to run: both STALE training and the baseline are off")

    @property
    def spec(self) -> Dataset:
        return DATASETS[self.dataset]

    @property
    def custom(self) -> bool:
        return self.unseen_sets is not None

    def default_train_config(self):
        """The dataset preset's training recipe, with the unseen classes' instances left out of the losses on the
        standard splits (the paper's practice) and background on own splits, as the actions nobody annotated are
        in the checkpoint a user trains on all their names."""
        return dataclasses.replace(self.spec.train, ignore_unseen=not self.custom)

    @property
    def num_splits(self) -> int:
        return NUM_SPLITS if self.unseen_sets is None else len(self.unseen_sets)

    def split_name(self, k: int) -> str:
        if self.custom:
            return f"{k} of {self.unseen_source or 'your own splits'}"
        return f"{self.dataset}/{self.setting}/{k}"

    def vocabulary(self, k: int, labels: list[str], train_labels: list[str]) -> tuple[list[str], list[str]]:
        """Split ``k``'s (seen, unseen) classes spelled as in the annotations (``labels``: every label there;
        ``train_labels``: those of the training subset, which own splits take their seen classes from)."""
        name = self.split_name(k)
        if not self.custom:
            seen, unseen = load_split(name)
            return match_classes(seen, labels, f"split {name}"), match_classes(unseen, labels, f"split {name}")
        unseen = match_classes(list(self.unseen_sets[k]), labels, f"split {name}")
        held_out = set(unseen)
        seen = [c for c in train_labels if c not in held_out]
        if not seen:
            raise DataError(f"split {name}: every label of the training subset is unseen; nothing is left to "
                            "train on")
        return seen, unseen


def read_unseen_file(path: str | Path) -> tuple[tuple[str, ...], ...]:
    """The user's own splits: one line per split, its unseen class names separated by commas; blank lines and
    lines starting with ``#`` are skipped. A bad file -> InputError naming the line."""
    sets = []
    for n, line in read_name_lines(path, "unseen-classes file"):
        names = check_classes(line.split(","), f"{path}:{n}")  # empty, wordless and duplicate names
        keys: dict[str, str] = {}
        for name in names:  # also alike as annotation labels are matched: "high jump" and "highjump"
            if class_key(name) in keys:
                raise InputError(f"{path}:{n}: duplicate class name {name!r} (same as {keys[class_key(name)]!r})")
            keys[class_key(name)] = name
        sets.append(tuple(names))
    if not sets:
        raise InputError(f"{path}: no split in it; write one line per split, its unseen class names separated "
                         "by commas")
    return tuple(sets)


def parse_splits(text: str, num_splits: int = NUM_SPLITS) -> tuple[int, ...]:
    """``"0-9"``, ``"0,3,5"`` or ``"0-2,7"`` -> split indices in ``0..num_splits-1``, in order, each once."""
    out: list[int] = []
    outside = f"--splits: split numbers must be in 0-{num_splits - 1}, got {text!r}"
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if not (0 <= a < num_splits and 0 <= b < num_splits):  # before the range is made: 0-99999999
                    raise InputError(outside)
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(f"--splits: expected e.g. 0-9 or 0,3,5, got {text!r}") from None
    out = list(dict.fromkeys(out))
    if not out or any(not 0 <= k < num_splits for k in out):
        raise InputError(outside)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- one split


def planned_outputs(cfg: ProtocolConfig, work_dir: str | Path) -> list[Path]:
    """Every file a run of ``cfg`` may write in ``work_dir`` (checked against the inputs before any work)."""
    work_dir = Path(work_dir)
    out = [work_dir / name for name in ("protocol.json", "results.json", "results.md")]
    for k in cfg.splits:
        split_dir = work_dir / f"split_{k}"
        out += [split_dir / name for name in ("model.pt", "model.last.pt", "train.json")]
        out += [split_dir / f"{m}_{what}.json" for m in METHODS for what in ("predictions", "eval")]
    return out


def _detect_and_evaluate(
    detector,
    method: str,
    split_dir: Path,
    feature_paths: list[Path],
    gt: dict,
    classes: list[str],
    tious: Sequence[float],
    progress: Optional[Callable[[str], None]],
) -> dict:
    """Detect on every test video that has features, write the predictions, evaluate on ``classes``."""
    from stale_cli.detection.detect import detect_batch
    from stale_cli.detection.outputs import results_json

    videos = []
    failures = detect_batch(detector, feature_paths, videos.append)
    for f in failures:
        log.warning("%s: detection failed (%s); counted as a miss", f.path.name, f.message)
    predictions = results_json(videos, detector.metadata())
    write_json_atomic(split_dir / f"{method}_predictions.json", predictions)
    result = evaluate_detection(gt, parse_predictions(predictions), tious, classes)
    result.update(method=method, classes=classes, failed_videos=[str(f.path) for f in failures])
    write_json_atomic(split_dir / f"{method}_eval.json", result)  # last: marks this method done for the split
    if progress:
        progress(f"{method}: average mAP {100 * result['average_mAP']:.2f}")
    return result


def _train_split(k, split_dir, ckpt, seen, features_dir, train_ann, clip, model_cfg, loss_cfg, data_cfg, train_cfg,
                 device, progress, dataset, say) -> dict:
    """Split ``k``'s training record (``train.json``), training (or resuming) its checkpoint first if need be."""
    from stale_cli.model.train import last_path_for, train

    trained = _load_done(split_dir / "train.json")
    if trained is not None:
        return trained
    last = last_path_for(ckpt)
    resume = last if last.is_file() else None
    say(f"split {k}: training on {len(seen)} seen classes" + (f" (resuming {last.name})" if resume else ""))
    result = train(
        features_dir, train_ann, seen, ckpt, clip.model, clip.name, str(clip.weights),
        model_cfg=model_cfg, loss_cfg=loss_cfg, data_cfg=data_cfg, train_cfg=train_cfg,
        device=device, resume=resume, progress=progress, dataset=dataset,
    )
    trained = {"best_epoch": result.best_epoch, "score": result.score_name, "train_videos": result.train_videos,
               "val_videos": result.val_videos, "missing_videos": result.missing_videos, "history": result.history}
    write_json_atomic(split_dir / "train.json", trained)
    return trained


def _load_done(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    done = read_json_or_none(path)
    if done is None:
        log.warning("%s is unreadable; redoing it", path)
    return done


def _settings_record(cfg: ProtocolConfig, features_dir, annotations, model_cfg, loss_cfg, data_cfg, train_cfg,
                     clip_name: str, clip_weights: str) -> dict:
    plain = lambda c: {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()}  # noqa: E731
    proto = plain(cfg)
    proto.pop("splits")  # adding splits to a finished run is fine
    proto.pop("unseen_source")  # so is a renamed file of the same splits
    return {
        "protocol": proto,
        "features": str(Path(features_dir).resolve()),
        "annotations": str(Path(annotations).resolve()),
        "model_config": plain(model_cfg),
        "loss_config": plain(loss_cfg),
        "data_config": plain(data_cfg),
        "train_config": plain(train_cfg),
        "clip_model": clip_name,
        "clip_weights": clip_weights,
    }


def _check_work_dir(work_dir: Path, record: dict) -> list:
    """Refuse a work dir holding a run with other settings, else record these; returns what was made (the folders
    that did not exist, outermost first, and ``protocol.json`` when it is new)."""
    path = work_dir / "protocol.json"
    old = _load_done(path)
    plain = json.loads(json.dumps(record))  # as it reads back from the file
    if old is not None and old != plain:
        changed = sorted(k for k in set(old) | set(plain) if old.get(k) != plain.get(k))
        raise InputError(
            f"{work_dir} holds a run with other settings ({', '.join(changed)} differ); rerun with the same "
            "settings to resume it, or choose another --work-dir"
        )
    made = missing_dirs(work_dir)
    if not path.exists():
        made.append(Path(os.path.abspath(path)))
    write_json_atomic(path, record)
    return made


def run_protocol(
    cfg: ProtocolConfig,
    features_dir: str | Path,
    annotations_path: str | Path,
    work_dir: str | Path,
    clip,
    model_cfg=None,
    loss_cfg=None,
    data_cfg=None,
    train_cfg=None,
    device="cpu",
    progress: bool = True,
    report: Optional[Callable[[str], None]] = None,
) -> dict:
    """Run (or resume) the protocol and return the summary also written to ``<work_dir>/results.json``.

    ``clip``: a loaded :class:`~stale_cli.features.clip_backbone.ClipBackbone` of the model the features came from; its
    text tower initialises each split's STALE text encoder and it encodes the prompts of the training-free mode.
    Config arguments left None take the dataset preset's values. ``report``: called with one line per finished
    step (the CLI prints them).
    """
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.dataset import index_features

    spec = cfg.spec
    model_cfg = model_cfg or ModelConfig()
    loss_cfg = loss_cfg or LossConfig()
    data_cfg = data_cfg or spec.data
    train_cfg = train_cfg or cfg.default_train_config()
    tious = list(cfg.tious or spec.tious)
    detect_cfg = spec.detect  # the training-free baseline's; STALE uses its checkpoint's
    work_dir = Path(work_dir)
    say = report or (lambda line: None)

    annotations = load_annotations(annotations_path)
    train_ann = annotations.select_subset(cfg.train_subset or spec.train_subset)
    test_ann = annotations.select_subset(cfg.test_subset or spec.test_subset)
    gt = ground_truth(test_ann)
    index = index_features(features_dir)
    test_ids = list(test_ann.videos)
    feature_paths = [index[v] for v in test_ids if v in index]
    if not feature_paths:
        raise DataError(
            f"none of the {len(test_ids)} test-subset videos has a feature file in {features_dir}; "
            "run `stale extract-features` on them first"
        )
    if len(feature_paths) < len(test_ids):
        log.warning(
            "%d of %d test videos have no features in %s: they are evaluated as videos with no detections",
            len(test_ids) - len(feature_paths), len(test_ids), features_dir,
        )
    vocabularies = {}  # every split's classes checked against the annotations before anything is written
    labels, train_labels = annotations.labels(), train_ann.labels()
    for k in cfg.splits:
        name = cfg.split_name(k)
        seen, unseen = cfg.vocabulary(k, labels, train_labels)
        missing_gt = [c for c in unseen if not any(lab == c for insts in gt.values() for lab, _, _ in insts)]
        if missing_gt:
            raise DataError(f"split {name}: unseen class(es) {missing_gt[:5]} have no instance in the test subset")
        vocabularies[k] = seen, unseen
    made = _check_work_dir(work_dir, _settings_record(cfg, features_dir, annotations_path, model_cfg, loss_cfg,
                                                      data_cfg, train_cfg, clip.name, str(clip.weights)))
    try:
        return _run_splits(cfg, vocabularies, work_dir, features_dir, train_ann, feature_paths, gt, test_ids, tious,
                           clip, detect_cfg, model_cfg, loss_cfg, data_cfg, train_cfg, device, progress, say)
    except StaleError:
        _undo_start(work_dir, made)  # a run that failed on its inputs before any result leaves nothing behind
        raise


def _undo_start(work_dir: Path, made: list) -> None:
    """Remove what :func:`_check_work_dir` made (``made``: the folders and the settings file, outermost first)
    when nothing else was written in the work dir since."""
    work_dir = Path(os.path.abspath(work_dir))
    found = list(work_dir.rglob("*")) if work_dir.is_dir() else []
    if any(p.is_file() and p not in made for p in found):
        return
    with contextlib.suppress(OSError):
        for path in [p for p in made if p.is_file()]:
            path.unlink()
        for folder in sorted((p for p in found if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()  # split folders left empty
        for folder in reversed([p for p in made if p.is_dir()]):
            folder.rmdir()


def _run_splits(cfg, vocabularies, work_dir, features_dir, train_ann, feature_paths, gt, test_ids, tious, clip,
                detect_cfg, model_cfg, loss_cfg, data_cfg, train_cfg, device, progress, say) -> dict:
    from stale_cli.detection.detect import DetectSettings, Detector

    per_split: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    for k in cfg.splits:
        split_dir = work_dir / f"split_{k}"
        seen, unseen = vocabularies[k]

        if cfg.baseline:
            done = _load_done(split_dir / f"{CLIP_METHOD}_eval.json")
            if done is None:
                say(f"split {k}: training-free baseline on {len(feature_paths)} test videos, {len(unseen)} classes")
                settings = DetectSettings(classes=unseen, mode=CLIP_METHOD, clip_model=clip.name,
                                          clip_weights=str(clip.weights), detect_config=detect_cfg)
                detector = Detector(settings, device=device, clip=clip)
                done = _detect_and_evaluate(detector, CLIP_METHOD, split_dir, feature_paths, gt, unseen, tious,
                                            lambda s: say(f"split {k}: {s}"))
            else:
                say(f"split {k}: baseline already evaluated (average mAP {100 * done['average_mAP']:.2f})")
            per_split[CLIP_METHOD][k] = done

        if cfg.train:
            ckpt = split_dir / "model.pt"
            for method in TRAINED_METHODS:
                done = _load_done(split_dir / f"{method}_eval.json")
                if done is not None:
                    say(f"split {k}: {METHOD_NAMES[method]} already evaluated (average mAP "
                        f"{100 * done['average_mAP']:.2f})")
                else:
                    trained = _train_split(k, split_dir, ckpt, seen, features_dir, train_ann, clip, model_cfg,
                                           loss_cfg, data_cfg, train_cfg, device, progress, cfg.dataset, say)
                    say(f"split {k}: detecting {len(unseen)} unseen classes with {ckpt.name} (best epoch "
                        f"{trained['best_epoch']}), new names read as --new-names {method}")
                    settings = DetectSettings(classes=unseen, mode="stale", checkpoint=ckpt, new_names=method)
                    done = _detect_and_evaluate(Detector(settings, device=device), method, split_dir, feature_paths,
                                                gt, unseen, tious, lambda s: say(f"split {k}: {s}"))
                per_split[method][k] = done

    summary = summarise(cfg, tious, per_split, len(feature_paths), len(test_ids))
    write_json_atomic(work_dir / "results.json", summary)
    write_text_atomic(work_dir / "results.md", markdown(summary))
    return summary


# ------------------------------------------------------------------------------------------------------ summary


def summarise(cfg: ProtocolConfig, tious: Sequence[float], per_split: dict, n_features: int, n_test: int) -> dict:
    """Mean and std over splits (fractions in [0, 1]) per method, and the paper's row where it applies."""
    rows = {}
    for method in METHODS:
        done = per_split.get(method) or {}
        if not done:
            continue
        m = np.array([done[k]["mAP"] for k in sorted(done)])  # (S, n_t)
        avg = np.array([done[k]["average_mAP"] for k in sorted(done)])  # (S,)
        rows[method] = {
            "name": METHOD_NAMES[method],
            "splits": sorted(done),
            "mAP_mean": m.mean(axis=0).tolist(),
            "mAP_std": m.std(axis=0).tolist(),
            "average_mAP_mean": float(avg.mean()),
            "average_mAP_std": float(avg.std()),
            "per_split": {str(k): {"mAP": done[k]["mAP"], "average_mAP": done[k]["average_mAP"]} for k in sorted(done)},
        }
    paper = None if cfg.custom else cfg.spec.paper[cfg.setting]
    return {
        "dataset": cfg.dataset,
        "setting": cfg.setting,
        "unseen_sets": None if not cfg.custom else {str(k): list(cfg.unseen_sets[k]) for k in cfg.splits},
        "unseen_source": cfg.unseen_source if cfg.custom else None,
        "test_subset": cfg.test_subset or cfg.spec.test_subset,
        "test_videos": n_test,
        "test_videos_with_features": n_features,
        "tiou": [round(float(t), 6) for t in tious],
        "rows": rows,
        "paper": None if paper is None else {
            "mAP": [paper.get(round(float(t), 2)) for t in tious], "average_mAP": paper[-1],
            "note": "paper Table 1, STALE, CLIP ViT-B/16 features, mean of 10 splits, in %"},
    }


def title(summary: dict) -> str:
    """What a summary measured: ``thumos14 75/25``, or ``thumos14 preset, own splits (splits.txt)``."""
    if summary["setting"] == CUSTOM_SETTING:
        return f"{summary['dataset']} preset, own splits ({summary.get('unseen_source') or 'unseen sets'})"
    return f"{summary['dataset']} {summary['setting'].replace('_', '/')}"


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(summary: dict) -> str:
    """The Table 1 row(s) as a Markdown table, then the average mAP of each split."""
    tious = summary["tiou"]
    head = ["method", "splits", *(f"mAP@{t:g}" for t in tious), "avg"]
    what = title(summary) + ("" if summary["setting"] == CUSTOM_SETTING else " (seen/unseen %)")
    lines = [
        f"# Zero-shot detection: {what}",
        "",
        f"Unseen classes of each split, all {summary['test_videos']} videos of the {summary['test_subset']} subset "
        f"({summary['test_videos_with_features']} with features); mAP in %, mean ± std over splits.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(head)) + "|",
    ]
    for row in summary["rows"].values():
        cells = [_pm(m, s) for m, s in zip(row["mAP_mean"], row["mAP_std"])]
        lines.append(f"| {row['name']} | {len(row['splits'])} | " + " | ".join(cells)
                     + f" | {_pm(row['average_mAP_mean'], row['average_mAP_std'])} |")
    paper = summary["paper"]
    if paper is not None:
        cells = ["–" if v is None else f"{v:.1f}" for v in paper["mAP"]]
        lines.append("| STALE, paper Table 1 | 10 | " + " | ".join(cells) + f" | {paper['average_mAP']:.1f} |")
    lines += [""] + [f"- {note}" for note in row_notes(summary)]
    if summary.get("unseen_sets"):
        lines += ["", "Unseen classes of each split:", ""]
        lines += [f"- split {k}: {', '.join(names)}" for k, names in summary["unseen_sets"].items()]
    lines += ["", "Average mAP (%) per split:", "", "| split | " + " | ".join(
        r["name"] for r in summary["rows"].values()) + " |", "|---|" + "---|" * len(summary["rows"])]
    splits = sorted({int(k) for r in summary["rows"].values() for k in r["per_split"]})
    for k in splits:
        cells = [
            f"{100 * r['per_split'][str(k)]['average_mAP']:.1f}" if str(k) in r["per_split"] else "–"
            for r in summary["rows"].values()
        ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
