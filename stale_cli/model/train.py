"""Training STALE on feature files + ActivityNet-format annotations (paper §3.3 "Learning objective", §4).

One library function, :func:`train`, used by ``stale train`` and by the zero-shot protocol. Per step the class
names go through the prompted text encoder (Eq. 2) and the windows through the head; the loss is Eqs. (9)-(12).
AdamW with one learning rate per parameter group (new head layers, prompt context and background, CLIP's text
tower), linear warm-up then cosine decay over the run's real number of steps, gradient clipping per group, AMP on
CUDA (the recipe and why it departs from the paper's: :class:`TrainConfig`). After every epoch the model is scored on
held-out videos of the *training* subset, counting only the *training* classes (never the unseen test classes):
the score is mAP@0.5 of the model's own detections (``stale_cli.model.postprocess`` + ``stale_cli.metric``), ties
broken by the lower validation loss; the best epoch is written to ``out`` and every epoch to ``<out>.last.pt``
(with optimizer state, for ``resume``). With no held-out video the last epoch is the best.

Multi-GPU: run the same command under ``torchrun --nproc-per-node N``; the process group is set up from the
environment (NCCL on CUDA, gloo on CPU), each rank reads its share of windows, rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from stale_cli.clip_identity import WeightsId, mismatch_hint, weights_sha256
from stale_cli.errors import CheckpointError, DataError, InputError, StaleError, first_line, out_of_memory
from stale_cli.features.clip_backbone import activation_of
from stale_cli.metric import evaluate_detection
from stale_cli.model import datasets
from stale_cli.model.checkpoint import check_checkpoint_path, load_weights, read_checkpoint, save_checkpoint
from stale_cli.model.config import LossConfig, ModelConfig, TrainConfig
from stale_cli.model.context import fit_context_foreground
from stale_cli.model.data.annotations import Annotations
from stale_cli.model.data.dataset import (RepeatFactorSampler, VideoSet, WindowDataset, collate_windows,
                                         foreground_rows, load_video_set, repeat_factors, unseen_spans,
                                         video_instances)
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.losses import STALELoss
from stale_cli.model.postprocess import DetectConfig, WindowedVideo, finalize
from stale_cli.torchfile import archive_problem

log = logging.getLogger(__name__)

LOSS_TERMS = ("cls", "mask", "comp", "const")


class TrainingError(StaleError):
    """Training cannot go on (e.g. the loss became NaN)."""


DEFAULT_EPOCHS = 15  # paper §4
MIN_STEPS = 240  # optimizer steps a default run takes at least (TrainConfig.epochs)


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_epoch: int
    score_name: str  # "mAP@0.5" (held-out videos, training classes) or "last epoch"
    history: list[dict] = field(default_factory=list)  # per epoch: train terms, val_loss, val_map50
    train_videos: int = 0
    val_videos: int = 0
    missing_videos: int = 0  # annotated videos without features
    model: torch.nn.Module | None = None  # the model after the last epoch (unwrapped, on its training device)


def default_epochs(steps_per_epoch: int) -> int:
    """Epochs of a run without ``--epochs``: 15, or as many as make MIN_STEPS optimizer steps."""
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(steps_per_epoch, 1)))


def last_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


def run_key(features_dir, annotations: Annotations, class_names, model_cfg, loss_cfg, data_cfg, train_cfg,
            clip_name: str, clip_weights: str) -> dict:
    """What makes two ``stale train`` runs the same run: the features (directory), the training annotations (a
    digest of their videos and instances), the classes, every configuration but the number of epochs (a rerun
    may go on further), and the CLIP weights. Recorded in every checkpoint; a rerun resumes only when it matches."""
    videos = [[v.video_id, v.subset, v.duration, [[i.label, i.start, i.end] for i in v.instances]]
              for v in annotations.videos.values()]
    train = {k: v for k, v in dataclasses.asdict(train_cfg).items() if k != "epochs"}
    key = {
        "features": str(Path(features_dir).resolve()),
        "annotations": hashlib.sha256(json.dumps(videos).encode()).hexdigest()[:16],
        "classes": list(class_names),
        "model": dataclasses.asdict(model_cfg),
        "loss": dataclasses.asdict(loss_cfg),
        "data": dataclasses.asdict(data_cfg),
        "train": train,
        "clip_model": clip_name,
        "clip_weights": clip_weights,
    }
    return json.loads(json.dumps(key))  # plain lists, as it reads back from a checkpoint


def run_key_differences(ours: dict, theirs) -> list[str]:
    """Names of the settings in which two run keys differ (``model.dropout``, ``annotations``, ...)."""
    if not isinstance(theirs, dict):
        return ["(the checkpoint records no settings: written by an older stale)"]
    out = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(name)
    return out


def saved_epoch(path: Path) -> int:
    """Epochs completed in the checkpoint at ``path`` (0 when there is none or it cannot be read); cheap: the
    tensors are memory-mapped, not read."""
    if not path.is_file() or archive_problem(path) is not None:
        return 0
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
    except Exception:  # torch raises many types for a file that is not a checkpoint
        return 0


def split_videos(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (by seed) split of video ids into (train, held-out); at least one of each when possible."""
    ids = sorted(ids)
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids)))) if fraction > 0 and len(ids) > 1 else 0
    order = np.random.default_rng(seed).permutation(len(ids))
    held = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


class _TrainStep(torch.nn.Module):
    """Text encoding + head in one forward, so DDP sees every trained parameter used inside ``forward``."""

    def __init__(self, model: torch.nn.Module, class_names: list[str]):
        super().__init__()
        self.model, self.class_names = model, list(class_names)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        text = self.model.encode_classes(self.class_names)  # Eq. (2): (K+1, C)
        return self.model(features, valid, text)


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, this process's device, whether we started the process group) from torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, False
    if device.type == "mps":
        raise InputError("training under torchrun needs CUDA GPUs or CPU processes; on an Apple GPU (mps) run "
                         "`stale train` as one process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


def _check_features(vs: VideoSet, clip_name: str, embed_dim: int, features_dir, activation: str | None,
                    weights: WeightsId, resumed: bool) -> None:
    """Refuse features the text encoder cannot read: made by CLIP running another activation, by another CLIP
    model, or (CLIP features only) with other weights than the text tower starts from (``weights``). Features of
    an older stale that record no weights identity: one warning, then they are used."""
    from stale_cli.features.clip_backbone import feature_activation_error

    clip_features = vs.feature_dim == embed_dim
    if clip_features and not weights.known:
        log.warning("no content hash of the text encoder's CLIP weights %s is known (a checkpoint of an older "
                    "stale); the features are not checked against them", weights.label)
    unidentified = []
    for vid, meta in vs.meta.items():
        why = feature_activation_error(meta, activation if clip_features else None)
        if why:
            raise DataError(f"{Path(features_dir) / vid}.npy: {why}")
        same = meta.weights_id.same_as(weights) if clip_features and weights.known else True
        if same is False:
            what = ("use the features it was trained on" if resumed
                    else mismatch_hint(meta.weights_id, weights))
            raise DataError(
                f"{Path(features_dir) / vid}.npy: features made with CLIP weights {meta.weights_id} but the text "
                f"encoder {'was trained' if resumed else 'starts'} from {weights}; {what} (text and features must "
                "come from the same CLIP)")
        if same is None:
            unidentified.append(vid)
    if unidentified:
        log.warning("%d feature file(s) in %s (e.g. %s.npy) do not record which CLIP weights made them (an older "
                    "stale); assuming %s", len(unidentified), features_dir, unidentified[0], weights)
    clips = vs.clip_models()
    if vs.feature_dim == embed_dim and clips and clip_name not in clips:
        raise DataError(
            f"features in {features_dir} come from CLIP {', '.join(sorted(clips))} but the text encoder is "
            f"{clip_name!r}; pass --clip-model {sorted(clips)[0]} (text and features must come from the same CLIP)"
        )


def _targets(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in ("labels", "also", "masks", "fg", "valid", "ignore")}


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: head weights (decayed), head biases/norms/embeddings, prompt (Eq. 2), CLIP's text tower.

    Each group keeps its own ``base_lr`` for the schedule; frozen parameters are left out.
    """
    groups = {"head": [], "head_no_decay": [], "prompt": [], "text": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("text_encoder.context", "text_encoder.background"):
            groups["prompt"].append(p)
        elif name.startswith("text_encoder."):
            groups["text"].append(p)
        elif p.ndim >= 2 and "queries" not in name:
            groups["head"].append(p)
        else:
            groups["head_no_decay"].append(p)
    lrs = {"head": cfg.lr, "head_no_decay": cfg.lr, "prompt": cfg.lr_prompt, "text": cfg.lr_text}
    return [{"name": k, "params": v, "lr": lrs[k], "base_lr": lrs[k],
             "weight_decay": cfg.weight_decay if k == "head" else 0.0} for k, v in groups.items() if v]


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` share of ``total`` steps, then cosine decay to zero."""
    n_warm = max(1, round(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total - n_warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def predict(model, class_names, vs: VideoSet, data_cfg: DataConfig, criterion, device, batch_size: int, *,
            detect_cfg: DetectConfig) -> tuple[dict[str, list[tuple[str, float, float, float]]], float]:
    """The model's own detections on ``vs``: (video id -> [(label, start_s, end_s, score)], mean window loss).

    ``detect_cfg``: what `stale detect` will use with the checkpoint (its dataset's).
    """
    was_training = model.training
    model.eval()
    ds = WindowDataset(vs, class_names, data_cfg, training=False)
    text = model.encode_classes(class_names)  # (K+1, C)
    # Each video's windows on its grid (feature rows; resize mode: the T snippets of the whole video), joined
    # across window edges as `stale detect` joins them.
    videos = {v.video_id: WindowedVideo(vs.features[v.video_id].shape[0] if data_cfg.mode == "window"
                                        else data_cfg.num_snippets, detect_cfg) for v in vs.videos}
    total, n = 0.0, 0
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate_windows):
        x, valid = batch["features"].to(device), batch["valid"].to(device)
        out = model(x, valid, text)
        total += float(criterion(out, _targets(batch, device))["total"]) * len(x)
        n += len(x)
        probs = out["probs"].cpu().numpy()  # (B, T, K+1), as `stale detect` reads them
        masks = out["masks"].float().cpu().numpy()  # (B, T, T)
        for b, i in enumerate(batch["index"].tolist()):
            vid, w = ds.items[i][:2]
            videos[vid].add(probs[b], masks[b], w.timeline, w.start_row, w.valid_len)
    preds = {}
    for v in vs.videos:
        dets = finalize(videos[v.video_id].segments(), v.duration, detect_cfg)
        preds[v.video_id] = [(class_names[k], s, e, c) for k, s, e, c in dets]
    model.train(was_training)
    return preds, total / max(n, 1)


def validate(model, class_names, vs: VideoSet, data_cfg: DataConfig, criterion, device, batch_size: int, *,
             detect_cfg: DetectConfig) -> dict:
    """Loss and mAP@0.5 of the model's own detections on ``vs``, counting the training classes only.

    A detection lying mostly (over half its length) on an instance of an unseen class is left out rather than
    counted as a false positive: finding an unseen action is what the model is for.
    """
    preds, loss = predict(model, class_names, vs, data_cfg, criterion, device, batch_size, detect_cfg=detect_cfg)
    keep = set(class_names)
    gt = {v.video_id: [(i.label, i.start, i.end) for i in v.instances if i.label in keep] for v in vs.videos}
    for v in vs.videos:
        spans = unseen_spans(v, class_names)
        if spans:
            preds[v.video_id] = [p for p in preds[v.video_id] if _covered(p[1], p[2], spans) <= 0.5]
    present = sorted({lab for inst in gt.values() for lab, _, _ in inst})
    mAP = float(evaluate_detection(gt, preds, [0.5], present)["mAP"][0]) if present else None
    return {"val_loss": loss, "val_map50": mAP}


def _covered(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    """Share of [start, end] covered by the union of ``spans`` (seconds)."""
    if end <= start:
        return 0.0
    t = np.linspace(start, end, 64)  # (64,): sample points, enough for a share
    inside = np.zeros(t.shape, dtype=bool)
    for s, e in spans:
        inside |= (t >= s) & (t <= e)
    return float(inside.mean())


def _kept(last_path: Path, epoch: int, start_epoch: int) -> str:
    """What is left on disk when training stops during ``epoch`` (0-based)."""
    if epoch > start_epoch:
        return f"the last good checkpoint is {last_path} (epoch {epoch})"
    return f"{last_path} is left as it was" if last_path.exists() else "no checkpoint was written"


def _score(record: dict) -> tuple[float, float]:
    """Order of epochs: higher held-out mAP@0.5, then lower held-out loss."""
    return (record["val_map50"] or 0.0, -record["val_loss"])


class _NonFinite(Exception):
    def __init__(self, step: int, terms: str):
        super().__init__(terms)
        self.step, self.terms = step, terms


def _run_epoch(batches, bar, step_module, criterion, optimizer, scaler, schedule, grad_clip: float, device,
               amp_dtype, world: int) -> dict[str, float]:
    """One pass over ``batches``, a step of ``bar`` (the run's tqdm bar) each; returns the sum of each loss term.
    NaN/inf loss -> _NonFinite.

    ``schedule(step_in_epoch)`` gives the learning-rate factor of each step.
    """
    sums = {k: 0.0 for k in (*LOSS_TERMS, "total")}
    for step, batch in enumerate(batches):
        factor = schedule(step)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        x, valid = batch["features"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = criterion(step_module(x, valid), _targets(batch, device))
        finite = torch.isfinite(losses["total"].detach()).float()
        if world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops together
        if finite.item() < 1:
            raise _NonFinite(step + 1, ", ".join(f"{k}={float(losses[k].detach()):.4g}" for k in LOSS_TERMS))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(optimizer)
        for g in optimizer.param_groups:  # per group: the text tower's large gradient cannot shrink the head's
            torch.nn.utils.clip_grad_norm_(g["params"], grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for k in sums:
            sums[k] += float(losses[k].detach())
        bar.set_postfix({k: f"{v / (step + 1):.3f}" for k, v in sums.items()}, refresh=False)
        bar.update(1)
    return sums


def train(
    features_dir: str | Path,
    annotations: Annotations,
    class_names: list[str],
    out: str | Path,
    clip_model: torch.nn.Module | None,
    clip_name: str,
    clip_weights: str = "random",
    model_cfg: ModelConfig = ModelConfig(),
    loss_cfg: LossConfig = LossConfig(),
    data_cfg: DataConfig = DataConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    resume: str | Path | None = None,
    progress: bool = True,
    rerun: bool = False,
    fresh: bool = False,
    dataset: str | None = None,
) -> TrainResult:
    """Train on the videos of ``annotations`` (already restricted to the training subset) that have features.

    ``class_names``: the training vocabulary spelled as in the annotations (instances of other classes are
    background). ``clip_model``: an open_clip CLIP of architecture ``clip_name`` whose text tower initialises the
    text encoder (``clip_weights`` says which weights it holds, for the checkpoint); ignored with ``resume``, which
    takes model, configs and classes from that checkpoint and continues after its last epoch up to
    ``train_cfg.epochs``. Writes the best epoch to ``out`` and the last to ``<out>.last.pt``.

    ``rerun``: ``resume`` is ``<out>.last.pt`` found by rerunning the same command; it is resumed only if its
    settings (:func:`run_key`) are these, else CheckpointError. A later epoch is never replaced by an earlier
    one: resuming from a checkpoint older than ``<out>.last.pt``, or another run writing a later epoch there
    meanwhile, is a CheckpointError, unless ``fresh`` (the user asked to start over).

    ``dataset``: the dataset preset (:mod:`stale_cli.model.datasets`) the configs come from, recorded in the
    checkpoint with its detection settings (None: the one ``data_cfg`` belongs to); with ``resume``, the
    checkpoint's.
    """
    out, device = Path(out), torch.device(device)
    check_checkpoint_path(out)
    check_checkpoint_path(last_path_for(out))
    rank, world, device, started = _distributed(device)
    job = _Job(features_dir=features_dir, annotations=annotations, class_names=list(class_names), out=out,
               clip_model=clip_model, clip_name=clip_name, clip_weights=clip_weights, model_cfg=model_cfg,
               loss_cfg=loss_cfg, data_cfg=data_cfg, train_cfg=train_cfg, device=device,
               resume=Path(resume) if resume is not None else None, progress=progress, rerun=rerun, fresh=fresh,
               dataset=dataset, rank=rank, world=world)
    try:
        return _train(job)
    finally:
        if started:
            dist.destroy_process_group()


@dataclass(frozen=True)
class _Job:
    """The arguments of :func:`train`, with this process's place under torchrun (``rank`` of ``world``)."""

    features_dir: str | Path
    annotations: Annotations
    class_names: list[str]
    out: Path
    clip_model: torch.nn.Module | None
    clip_name: str
    clip_weights: str
    model_cfg: ModelConfig
    loss_cfg: LossConfig
    data_cfg: DataConfig
    train_cfg: TrainConfig
    device: torch.device
    resume: Path | None
    progress: bool
    rerun: bool
    fresh: bool
    dataset: str | None
    rank: int
    world: int


@dataclass
class _Start:
    """Where a run starts, decided once (nanoGPT's ``init_from``): the configs, the CLIP it reads, the epoch and
    history so far, and the weights the model is built from: a checkpoint's (``state_dict``, with its optimizer
    state) when resuming, else CLIP's text tower (``clip_model``)."""

    vs: VideoSet  # the training subset's features, cut with data_cfg
    model_cfg: ModelConfig
    loss_cfg: LossConfig
    data_cfg: DataConfig
    spec: datasets.Dataset
    clip_name: str
    clip_weights: str
    weights: WeightsId  # what made the features the text encoder reads
    activation: str | None  # the text tower's activation (None: no CLIP given, nothing to compare)
    key: dict  # run_key, recorded in every checkpoint
    start_epoch: int = 0
    history: list = field(default_factory=list)
    state_dict: dict | None = None
    optimizer_state: dict | None = None
    clip_model: torch.nn.Module | None = None
    checkpoint: Path | None = None  # the checkpoint state_dict comes from (for messages)

    def build_model(self) -> torch.nn.Module:
        if self.state_dict is not None:  # held against the config first (another shape is one line)
            return load_weights(self.checkpoint, self.state_dict, self.model_cfg, self.activation)
        if self.clip_model is None:
            raise InputError("a CLIP model is needed to start training (or resume from a checkpoint)")
        from stale_cli.model.stale import STALE

        return STALE(self.model_cfg, self.clip_model)


def _from_scratch(job: _Job, key: dict) -> _Start:
    """A new run: the text encoder starts from ``job.clip_model``'s text tower; the model's widths come from the
    features and the CLIP architecture."""
    import open_clip

    vs = load_video_set(job.features_dir, list(job.annotations.videos.values()), job.data_cfg)
    embed = int(open_clip.get_model_config(job.clip_name)["embed_dim"])
    model_cfg = replace(job.model_cfg, feature_dim=vs.feature_dim, embed_dim=embed,
                        num_snippets=job.data_cfg.num_snippets, clip_model=job.clip_name)
    spec = datasets.get(job.dataset) if job.dataset is not None else datasets.for_data_config(job.data_cfg)
    return _Start(vs=vs, model_cfg=model_cfg, loss_cfg=job.loss_cfg, data_cfg=job.data_cfg, spec=spec,
                  clip_name=job.clip_name, clip_weights=job.clip_weights,
                  weights=WeightsId(job.clip_weights, weights_sha256(job.clip_weights)),
                  activation=activation_of(job.clip_model) if job.clip_model is not None else None, key=key,
                  clip_model=job.clip_model)


def _from_checkpoint(job: _Job, key: dict) -> _Start:
    """A resumed run: model, configs, dataset, CLIP and history from ``job.resume``, after checking that the
    features and classes are the ones it was trained on (and, for a rerun of the same command, its settings)."""
    resume, last_path = job.resume, last_path_for(job.out)
    ckpt, info = read_checkpoint(resume)
    if job.rerun:
        differ = run_key_differences(key, info.extra.get("run_key"))
        if differ:
            raise CheckpointError(
                f"{resume} holds a training run with other settings ({', '.join(differ)}); rerun with its "
                "settings to resume it, pass --fresh (or --restart) to start over, or give another --output")
    vs = load_video_set(job.features_dir, list(job.annotations.videos.values()), info.data_config)
    if info.feature_dim != vs.feature_dim:
        raise CheckpointError(
            f"{resume}: checkpoint was trained on {info.feature_dim}-dimensional features but those in "
            f"{job.features_dir} are {vs.feature_dim}-dimensional; resume with the same features")
    if abs(info.feature_fps - vs.feature_fps()) > 1e-6:
        raise CheckpointError(f"{resume}: checkpoint features are at {info.feature_fps} fps, "
                              f"those in {job.features_dir} at {vs.feature_fps()} fps")
    if list(info.class_names) != job.class_names:
        raise CheckpointError(f"{resume}: checkpoint was trained on other classes; resume with the same split")
    later = saved_epoch(last_path)
    if not job.fresh and later > info.epoch:
        raise CheckpointError(
            f"{last_path} holds epoch {later}, later than epoch {info.epoch} of {resume}: resuming would "
            f"overwrite it with an earlier one; resume from {last_path} (or rerun the same command), pass "
            "--fresh (or --restart) to start over, or give another --output")
    return _Start(vs=vs, model_cfg=info.model_config, loss_cfg=info.loss_config, data_cfg=info.data_config,
                  spec=datasets.get(info.dataset), clip_name=info.clip_model, clip_weights=info.clip_weights,
                  weights=info.weights_id, activation=info.clip_activation,
                  key=info.extra.get("run_key") or key,  # --resume: the run goes on as it was set up
                  start_epoch=info.epoch, history=list(info.extra.get("history", [])),
                  state_dict=ckpt["state_dict"], checkpoint=resume, optimizer_state=ckpt.get("extra", {}).get("optimizer") or None)


def _train(job: _Job) -> TrainResult:
    class_names, train_cfg, device, rank, world = job.class_names, job.train_cfg, job.device, job.rank, job.world
    torch.manual_seed(train_cfg.seed)
    if not class_names:
        raise InputError("no training classes given")
    key = run_key(job.features_dir, job.annotations, class_names, job.model_cfg, job.loss_cfg, job.data_cfg,
                  train_cfg, job.clip_name, job.clip_weights)
    start = _from_checkpoint(job, key) if job.resume is not None else _from_scratch(job, key)
    vs, model_cfg, data_cfg, start_epoch, history = start.vs, start.model_cfg, start.data_cfg, start.start_epoch, \
        start.history
    last_path = last_path_for(job.out)
    _check_features(vs, start.clip_name, model_cfg.embed_dim, job.features_dir, start.activation, start.weights,
                    job.resume is not None)

    train_ids, val_ids = split_videos([v.video_id for v in vs.videos], train_cfg.val_fraction, train_cfg.seed)
    train_set, val_set = vs.subset(train_ids), vs.subset(val_ids)
    if not any(video_instances(v, class_names) for v in train_set.videos):
        raise DataError(
            f"empty training set: none of the {len(train_ids)} training videos has an instance of the "
            f"{len(class_names)} training classes; check --subset and the class list")
    ds = WindowDataset(train_set, class_names, data_cfg, training=True, seed=train_cfg.seed,
                       ignore_unseen=train_cfg.ignore_unseen)
    if rank == 0:
        log.info("training on %d videos (%d windows), %d held out for validation, %d classes",
                 len(train_ids), len(ds), len(val_ids), len(class_names))

    model = start.build_model().to(device).train()
    criterion = STALELoss(model_cfg, start.loss_cfg)
    step_module = _TrainStep(model, class_names)
    if world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(param_groups(model, train_cfg))
    if start.optimizer_state:
        try:
            optimizer.load_state_dict(start.optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # torch's words for "another optimizer"
            raise CheckpointError(f"{job.resume}: its optimizer state does not fit this model's parameters "
                                  f"({first_line(e)[:200]}); the checkpoint is damaged or of another shape: pass "
                                  "--fresh to start over") from None
        for g, now in zip(optimizer.param_groups, param_groups(model, train_cfg)):
            g["base_lr"] = now["base_lr"]
    amp_dtype = None  # mixed precision on CUDA only: bfloat16 where supported, else float16 with a grad scaler
    if train_cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if train_cfg.balance_classes:
        sampler = RepeatFactorSampler(repeat_factors(ds.window_classes, len(class_names)), train_cfg.seed, rank, world)
    else:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=train_cfg.seed)
    loader = DataLoader(ds, batch_size=train_cfg.batch_size, sampler=sampler, collate_fn=collate_windows,
                        num_workers=train_cfg.num_workers, pin_memory=device.type == "cuda")

    if train_cfg.epochs is None:
        train_cfg = replace(train_cfg, epochs=default_epochs(len(loader)))
        if train_cfg.epochs != DEFAULT_EPOCHS and rank == 0:
            log.info("%d epochs of %d steps (at least %d steps on a small training set)", train_cfg.epochs,
                     len(loader), MIN_STEPS)
    spec = start.spec
    # L_ctx: fitted on the same videos and labels as the model, once (it does not depend on the model's weights)
    context = fit_context_foreground(foreground_rows(train_set, class_names, train_cfg.ignore_unseen))
    describe = dict(model_cfg=model_cfg, loss_cfg=start.loss_cfg, data_cfg=data_cfg, class_names=class_names,
                    dataset=spec.name, feature_fps=vs.feature_fps(), clip_model=start.clip_name,
                    clip_weights=start.clip_weights, clip_weights_sha256=start.weights.sha256, run_key=start.key,
                    context_foreground=context)
    if job.resume is not None and rank == 0:
        if start_epoch >= train_cfg.epochs:
            log.info("%s: already trained %d of %d epochs; nothing to do (--epochs N goes on further, --fresh "
                     "starts over)", job.resume, start_epoch, train_cfg.epochs)
        else:
            log.info("resuming from %s at epoch %d of %d", job.resume, start_epoch + 1, train_cfg.epochs)
    known = saved_epoch(last_path)  # the epoch in <out>.last.pt as this run last saw it
    best = max(history, key=_score) if val_ids and history else None
    total_steps = train_cfg.epochs * len(loader)  # the schedule spans the whole run, resumed or not
    # One bar for the whole run (its ETA covers every epoch left), not one per epoch.
    bar = tqdm(total=max(0, train_cfg.epochs - start_epoch) * len(loader), unit="step", file=sys.stderr,
               disable=not job.progress or rank != 0, dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start_epoch, train_cfg.epochs):
            sampler.set_epoch(epoch)
            bar.set_description(f"epoch {epoch + 1}/{train_cfg.epochs}", refresh=False)
            t0 = time.perf_counter()
            try:
                first = epoch * len(loader)
                schedule = lambda i: lr_factor(first + i, total_steps, train_cfg.warmup)  # noqa: E731
                sums = _run_epoch(loader, bar, step_module, criterion, optimizer, scaler, schedule,
                                  train_cfg.grad_clip, device, amp_dtype, world)
            except _NonFinite as e:
                raise TrainingError(f"loss became NaN/inf at epoch {epoch + 1} step {e.step} ({e.terms}); stopped, "
                                    f"{_kept(last_path, epoch, start_epoch)}; try a lower --lr") from None
            except (MemoryError, RuntimeError) as e:  # the machine's memory or the GPU's: every step needs as much
                if not out_of_memory(e):
                    raise
                smaller = max(1, train_cfg.batch_size // 2)
                raise TrainingError(f"out of memory at epoch {epoch + 1} with --batch-size {train_cfg.batch_size}; "
                                    f"stopped, {_kept(last_path, epoch, start_epoch)}; rerun with a smaller "
                                    f"--batch-size (e.g. {smaller})") from None
            record = {"epoch": epoch + 1, **{k: v / max(len(loader), 1) for k, v in sums.items()},
                      "seconds": time.perf_counter() - t0, "val_loss": None, "val_map50": None}
            if val_ids:
                record.update(validate(model, class_names, val_set, data_cfg, criterion, device, train_cfg.batch_size,
                                       detect_cfg=spec.detect))
                is_best = best is None or _score(record) > _score(best)
            else:  # without validation the last epoch is kept
                is_best = epoch + 1 == train_cfg.epochs
            history.append(record)
            if is_best:
                best = record
            if rank == 0:
                bar.clear()
                _log_epoch(record, train_cfg.epochs, is_best and bool(val_ids))
                bar.refresh()
                now = saved_epoch(last_path)
                if now != known and now > epoch + 1:  # another run wrote a later epoch meanwhile: keep it
                    raise CheckpointError(
                        f"{last_path} now holds epoch {now}, written by another run meanwhile; not overwriting it "
                        f"with epoch {epoch + 1}. Give each run its own --output")
                save_checkpoint(last_path, model, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                                history=history, train_config=dataclasses.asdict(train_cfg), **describe)
                known = epoch + 1
                if is_best:
                    save_checkpoint(job.out, model, epoch=epoch + 1, history=history,
                                    train_config=dataclasses.asdict(train_cfg), **describe)
    finally:
        bar.close()
    if world > 1:
        dist.barrier()
    return TrainResult(
        best_path=job.out, last_path=last_path, best_epoch=(best or {}).get("epoch", start_epoch),
        score_name="mAP@0.5" if val_ids else "last epoch", history=history, train_videos=len(train_ids),
        val_videos=len(val_ids), missing_videos=len(vs.missing), model=model)


def _log_epoch(r: dict, epochs: int, best: bool) -> None:
    terms = " ".join(f"{k} {r[k]:.3f}" for k in LOSS_TERMS)
    msg = f"epoch {r['epoch']}/{epochs}: loss {r['total']:.3f} ({terms})"
    if r["val_loss"] is not None:
        m = "n/a" if r["val_map50"] is None else f"{100 * r['val_map50']:.1f}%"
        msg += f"; held-out loss {r['val_loss']:.3f}, mAP@0.5 {m}" + (" (best so far)" if best else "")
    log.info(msg)


def default_training_subset(annotations: Annotations) -> str | None:
    """ActivityNet trains on ``training`` (or a file's ``train``), THUMOS14 on ``val`` (beside ``test``); a file
    with one subset trains on all of it."""
    subsets = annotations.subsets()
    for name in (datasets.ACTIVITYNET.train_subset, "train"):
        if name in subsets:
            return name
    if datasets.THUMOS14.train_subset in subsets and datasets.THUMOS14.test_subset in subsets:
        return datasets.THUMOS14.train_subset
    if len(subsets) <= 1:
        return None
    raise InputError(f"{annotations.source}: choose the training subset with --subset ({', '.join(subsets)})")


def select_classes(annotations: Annotations, split: str | None = None, names: list[str] | None = None) -> list[str]:
    """The training vocabulary, spelled as in the annotations: a split's seen classes, a given list, or all."""
    from stale_cli.model.data.splits import load_split, match_classes

    if split is not None and names is not None:
        raise InputError("give either --split or --classes / --classes-file, not both")
    if split is not None:
        seen, _ = load_split(split)
        return match_classes(seen, annotations.classes, f"split {split}")
    if names is not None:
        return match_classes(names, annotations.classes, "class list")
    if not annotations.classes:
        raise DataError(f"{annotations.source}: no classes (no annotated instances)")
    return list(annotations.classes)
