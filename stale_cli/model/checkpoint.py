"""Self-describing checkpoints (docs/formats.md).

A checkpoint is a plain dict saved with ``torch.save`` that loads with ``torch.load(weights_only=True)``:
format name and version, the dataset preset it was trained with, the model/loss/data/detect configs as plain
dicts, the training class names, the feature rate and width, the CLIP model name (and which CLIP weights
initialised the text tower), the state dict, and for ``--resume`` the epoch, optimizer state and training
history, and the context foreground's three weights (stale_cli/model/context.py). ``stale detect --checkpoint
x.pt`` needs nothing else: :func:`load_checkpoint` rebuilds the model from an architecture-only open_clip model (no
CLIP weights are downloaded; the text tower's weights are in the state dict).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stale_cli.errors import CheckpointError, StaleError, first_line
from stale_cli.fileio import atomic_path
from stale_cli.model import datasets
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.context import ContextForeground
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.postprocess import DetectConfig
from stale_cli.text import number_text
from stale_cli.torchfile import archive_problem, nonfinite_tensor

log = logging.getLogger(__name__)

FORMAT = "stale-checkpoint"
VERSION = 2  # 2: pairwise mask localizer (version 1 checkpoints hold the paper's head, which cannot localize)


@dataclass(frozen=True)
class CheckpointInfo:
    model_config: ModelConfig
    loss_config: LossConfig
    data_config: DataConfig
    class_names: tuple[str, ...]  # training vocabulary, in the model's class order
    feature_fps: float  # rate the training features were sampled at (snippets per second in window mode)
    feature_dim: int  # D of the training features
    clip_model: str  # open_clip architecture of the text tower (and of the features, when they are CLIP's)
    clip_weights: str  # what initialised the text tower before training ("openai", a path, or "random")
    epoch: int  # epochs completed
    clip_activation: str = "gelu"  # the text tower's MLP activation: gelu | quick_gelu (OpenAI's weights)
    extra: dict = field(default_factory=dict)  # optimizer state, history, training options: for --resume
    # Inference settings of the dataset preset the model was trained with (ActivityNet: Soft-NMS sigma 0.75, top
    # 100); `stale detect` and the protocol start from these.
    detect_config: DetectConfig = DetectConfig()
    # The dataset preset (stale_cli.model.datasets) it was trained with; checkpoints written before they recorded it
    # get the one their data config belongs to.
    dataset: str = datasets.THUMOS14.name
    clip_weights_sha256: str | None = None  # content hash of a weights file in clip_weights (None: a tag, or older)
    # L_ctx (stale_cli/model/context.py), fitted on the training videos; None in checkpoints written before it.
    context_foreground: ContextForeground | None = None

    @property
    def weights_id(self):
        """The CLIP weights the text tower started from (:class:`stale_cli.clip_identity.WeightsId`)."""
        from stale_cli.clip_identity import WeightsId

        return WeightsId(self.clip_weights, self.clip_weights_sha256)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    data_cfg: DataConfig,
    class_names: list[str],
    feature_fps: float,
    clip_model: str,
    clip_weights: str = "random",
    clip_weights_sha256: str | None = None,
    epoch: int = 0,
    detect_cfg: DetectConfig | None = None,
    dataset: str | None = None,
    context_foreground: ContextForeground | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint atomically. ``extra`` (optimizer state, history, ...) must hold only plain types/tensors.

    ``clip_weights_sha256``: the content hash of the weights file ``clip_weights`` names (None for a tag).
    ``dataset``: the dataset preset trained with (default: the one ``data_cfg`` belongs to); ``detect_cfg``:
    inference settings to record (default: that dataset's); ``context_foreground``: L_ctx, fitted on the training
    videos (None: not recorded).
    """
    from stale_cli.features.clip_backbone import activation_of

    spec = datasets.get(dataset) if dataset is not None else datasets.for_data_config(data_cfg)
    detect_cfg = detect_cfg or spec.detect
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": spec.name,
        "model_config": dataclasses.asdict(model_cfg),
        "loss_config": dataclasses.asdict(loss_cfg),
        "data_config": dataclasses.asdict(data_cfg),
        "detect_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(detect_cfg).items()},
        "class_names": list(class_names),
        "feature_fps": float(feature_fps),
        "feature_dim": int(model_cfg.feature_dim),
        "clip_model": str(clip_model),
        "clip_weights": str(clip_weights),
        "clip_weights_sha256": clip_weights_sha256,
        "clip_activation": activation_of(model),  # the text tower's, as built (QuickGELU for OpenAI's weights)
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    if context_foreground is not None:
        ckpt["context_foreground"] = context_foreground.to_dict()
    path = Path(path)
    kept = f"{path} is left as it was (the last good checkpoint)" if path.is_file() else "nothing was written"
    try:
        with atomic_path(path) as tmp:
            try:
                torch.save(ckpt, tmp)
            except RuntimeError as e:  # torch's zip writer reports a full disk as a RuntimeError
                raise OSError(f"{first_line(e)[:200]} (disk full?)") from e
    except StaleError as e:
        raise CheckpointError(f"{e}; {kept}") from e


def check_checkpoint_path(path: str | Path) -> None:
    """Refuse, before any training, a checkpoint path that is a directory or in a directory that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"--output {path}: is a directory; give a checkpoint file name, e.g. {path / 'model.pt'}")
    from stale_cli.fileio import check_writable

    try:
        check_writable(path.parent, f"--output {path}")  # the folder is made by the first save, not here
    except StaleError as e:
        raise CheckpointError(str(e)) from None


def is_stale_checkpoint(path: str | Path) -> bool:
    """Cheaply, whether ``path`` holds a checkpoint of ours: its dict's format key, read with the tensors memory-
    mapped (not read), so an unrelated 100 MB ``.pt`` costs only its small pickle."""
    if archive_problem(path) is not None:
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # anything torch cannot read as a weights-only zip checkpoint is not ours
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


# What a checkpoint may hold, checked before anything is built from it, as a feature sidecar is: each config field
# of the type of its default, finite, in these bounds (far beyond any real model: the paper's has 256 snippets, 20
# queries, 2 layers; low enough that a crafted file cannot make stale allocate without end). The sizes are then
# held against the state dict's shapes on a model built without memory (:func:`load_weights`).
MAX_SNIPPETS = 4096
MAX_CLASSES = 100_000
_BIG = 1 << 20
_LIMITS = {
    "model config": dict(
        feature_dim=(1, 16384), embed_dim=(1, 16384), num_snippets=(2, MAX_SNIPPETS), encoder_layers=(0, 64),
        num_heads=(1, 1024), ffn_dim=(1, 65536), dropout=(0, 1), context_tokens=(0, 1024), context_init_std=(0, 100),
        num_queries=(1, 4096), decoder_layers=(0, 64), theta_bin=(0, 1), alpha_init=(-100, 100), mask_dim=(1, 16384),
        dynconv_kernels=(1, 256), dynconv_kernel_size=(1, 255), dynconv_temperature=(1e-6, 1e6), theta_c=(0, 1),
        theta_m=(0, 1), consistency_topk=(1, MAX_SNIPPETS)),
    "loss config": dict(weight_cls=(0, 1e6), weight_mask=(0, 1e6), dice_weight=(0, 1e6), weight_comp=(0, 1e6),
                        weight_const=(0, 1e6)),
    "data config": dict(num_snippets=(2, MAX_SNIPPETS), overlap=(0, 0.999), empty_window_keep=(0, 1), jitter=(0, 1),
                        max_snippet_seconds=(1e-3, 1e6), video_mean=(0, 1)),
    "detect config": dict(theta_c=(0, 1), thetas=(0, 1), mask_weight=(0, 1), prior_weight=(0, 1),
                          max_candidates=(1, _BIG), nms_sigma=(1e-6, 1e6), pre_nms_top_n=(1, _BIG), top_k=(1, _BIG),
                          min_score=(0, 1), fragment_weight=(0, 1)),
}
MAX_THETAS = 100


def _bad(path: Path, what: str, expected: str, value) -> CheckpointError:
    shown = number_text(value) if not isinstance(value, (dict, list, tuple)) else type(value).__name__
    return CheckpointError(f"{path}: bad checkpoint: {what} must be {expected}, got {shown[:80]}; it is damaged or "
                           "was not written by `stale train`")


def _number(path: Path, what: str, value, kind: type, lo, hi):
    """``value`` checked to be a finite ``kind`` (int, or float accepting ints) in [lo, hi]."""
    noun = "an integer" if kind is int else "a number"
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and lo <= value <= hi):
        raise _bad(path, what, f"{noun} in [{number_text(lo)}, {number_text(hi)}]", value)
    return kind(value)


def _config(cls, d, name: str, path: Path):
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: checkpoint has no {name}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{path}: {name} has fields {unknown} this version of stale does not know; upgrade stale")
    limits = _LIMITS.get(name, {})
    checked = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value, default, what = d[f.name], f.default, f"{name} {f.name}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _bad(path, what, "true or false", value)
        elif isinstance(default, (int, float)):
            value = _number(path, what, value, type(default), *limits.get(f.name, (-math.inf, math.inf)))
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise _bad(path, what, "a string", value)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_THETAS:
                raise _bad(path, what, f"a list of 1 to {MAX_THETAS} numbers", value)
            value = tuple(_number(path, what, v, float, *limits.get(f.name, (-math.inf, math.inf))) for v in value)
        checked[f.name] = value
    try:
        return cls(**checked)
    except (TypeError, StaleError) as e:
        raise CheckpointError(f"{path}: bad {name} ({e})") from None


def _optional_str(value) -> str | None:
    return value if isinstance(value, str) else None


def _check_top_level(ckpt: dict, path: Path) -> None:
    """The fields beside the configs: class names, feature rate and width, CLIP names, epoch, extra."""
    from stale_cli.sidecar import MAX_FEATURE_FPS, MIN_FEATURE_FPS

    names = ckpt.get("class_names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _bad(path, "class_names", "a list of names", names)
    if not names:
        raise CheckpointError(f"{path}: checkpoint has no class names")
    if len(names) > MAX_CLASSES:
        raise _bad(path, "class_names", f"at most {MAX_CLASSES} names", f"{len(names)} names")
    _number(path, "feature_fps", ckpt.get("feature_fps"), float, MIN_FEATURE_FPS, MAX_FEATURE_FPS)
    _number(path, "feature_dim", ckpt.get("feature_dim"), int, *_LIMITS["model config"]["feature_dim"])
    _number(path, "epoch", ckpt.get("epoch", 0), int, 0, _BIG)
    for key in ("clip_model", "clip_weights"):
        if not isinstance(ckpt.get(key), str):
            raise _bad(path, key, "a string", ckpt.get(key))
    if not isinstance(ckpt.get("clip_activation", ""), (str, type(None))):
        raise _bad(path, "clip_activation", "a string", ckpt.get("clip_activation"))
    extra = ckpt.get("extra") or {}
    if not isinstance(extra, dict):
        raise _bad(path, "extra", "a dict", ckpt.get("extra"))
    for key, kind in (("history", list), ("run_key", dict), ("optimizer", dict)):  # what --resume reads
        if extra.get(key) is not None and not isinstance(extra[key], kind):
            raise _bad(path, f"extra {key}", f"a {kind.__name__}", extra[key])
    for record in extra.get("history") or []:  # one dict of numbers per epoch
        if not isinstance(record, dict):
            raise _bad(path, "extra history", "a list of dicts", record)
        _number(path, "extra history epoch", record.get("epoch"), int, 1, _BIG)
        for key, value in record.items():
            if key != "epoch" and value is not None:
                _number(path, f"extra history {key}", value, float, -math.inf, math.inf)
    state = ckpt["state_dict"]
    for key, tensor in state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise _bad(path, "the state dict", "names of tensors", key)
    broken = nonfinite_tensor(state)
    if broken is not None:
        raise CheckpointError(f"{path}: checkpoint weight {broken} holds NaN or infinite values: the model would "
                              "detect nothing; use an earlier checkpoint of the run (<output>.last.pt) or train again")


def read_checkpoint(path: str | Path) -> tuple[dict, CheckpointInfo]:
    """Load and validate a checkpoint file on the CPU: (raw dict incl. state_dict, info)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    problem = archive_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: not a stale checkpoint: {problem}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (pickle, zip, runtime) for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a stale checkpoint ({type(e).__name__}: {first_line(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a stale checkpoint (written by `stale train`)")
    if ckpt.get("version") == 1:
        raise CheckpointError(
            f"{path}: checkpoint from stale 0.1, whose mask head could not localize (its masks are flat); "
            "train a new one with this version")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('version')!r}, this stale reads version {VERSION}"
        )
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint has no state dict")
    _check_top_level(ckpt, path)
    from stale_cli.features.clip_backbone import activation_problem, recorded_activation

    clip_model, clip_weights = ckpt["clip_model"], ckpt["clip_weights"]
    problem = activation_problem(clip_model, clip_weights, ckpt.get("clip_activation"))
    if problem:
        raise CheckpointError(f"{path}: checkpoint {problem}; train it again with this version of stale")
    data_config = _config(DataConfig, ckpt.get("data_config"), "data config", path)
    if ckpt.get("dataset") is None:  # written before checkpoints recorded it: the one of its data config
        spec = datasets.for_data_config(data_config)
    else:
        try:
            spec = datasets.get(str(ckpt["dataset"]))
        except StaleError:
            raise CheckpointError(f"{path}: checkpoint names an unknown dataset {ckpt['dataset']!r}; upgrade "
                                  "stale") from None
    if ckpt.get("detect_config") is None:  # written before checkpoints recorded it: the dataset's
        detect_config = spec.detect
    else:
        detect_config = _config(DetectConfig, ckpt["detect_config"], "detect config", path)
    context = None
    if ckpt.get("context_foreground") is not None:
        try:
            context = ContextForeground.from_dict(ckpt["context_foreground"])
        except ValueError as e:
            raise _bad(path, "context_foreground", str(e), ckpt["context_foreground"]) from None
    model_config = ckpt.get("model_config")
    if isinstance(model_config, dict) and "context_init" not in model_config:
        model_config = dict(model_config, context_init="")  # before 0.3 the context always started random
    info = CheckpointInfo(
        model_config=_config(ModelConfig, model_config, "model config", path),
        loss_config=_config(LossConfig, ckpt.get("loss_config"), "loss config", path),
        data_config=data_config,
        detect_config=detect_config,
        dataset=spec.name,
        class_names=tuple(ckpt["class_names"]),
        feature_fps=float(ckpt["feature_fps"]),
        feature_dim=int(ckpt["feature_dim"]),
        clip_model=clip_model,
        clip_weights=clip_weights,
        clip_weights_sha256=_optional_str(ckpt.get("clip_weights_sha256")),
        epoch=int(ckpt.get("epoch", 0)),
        clip_activation=recorded_activation(clip_model, ckpt.get("clip_activation")),
        extra=dict(ckpt.get("extra") or {}),
        context_foreground=context,
    )
    if info.feature_dim != info.model_config.feature_dim:
        raise CheckpointError(f"{path}: bad checkpoint: feature_dim {info.feature_dim} is not the model config's "
                              f"{info.model_config.feature_dim}")
    if info.model_config.num_snippets != info.data_config.num_snippets:
        raise CheckpointError(f"{path}: bad checkpoint: the model config's num_snippets "
                              f"{info.model_config.num_snippets} is not the data config's {info.data_config.num_snippets}")
    return ckpt, info


def build_model(model_cfg: ModelConfig, clip_activation: str = "gelu", device: str = "cpu") -> torch.nn.Module:
    """A STALE model with an architecture-only CLIP text tower (random weights; nothing is downloaded), built
    with ``clip_activation`` (the checkpoint's ``clip_activation``). ``device="meta"``: shapes only, no memory."""
    import open_clip

    from stale_cli.features.clip_backbone import QUICK_GELU, random_init_warning_silenced
    from stale_cli.model.stale import STALE

    try:
        with random_init_warning_silenced(), torch.device(device):  # the state dict is loaded right after
            clip = open_clip.create_model(model_cfg.clip_model, pretrained=None, device=device,
                                          force_quick_gelu=clip_activation == QUICK_GELU)
            return STALE(model_cfg, clip)
    except RuntimeError as e:
        raise CheckpointError(f"unknown open_clip model {model_cfg.clip_model!r} in the checkpoint ({e})") from None


def load_weights(path: str | Path, state: dict, model_cfg: ModelConfig, clip_activation: str) -> torch.nn.Module:
    """The model the checkpoint at ``path`` describes (``model_cfg``, ``clip_activation``) with its weights
    ``state``, on the CPU. The config is first built without memory (the "meta" device) and held against the
    state dict, so a config that does not fit the weights (another shape, a crafted ``ffn_dim: 1e10``) is one
    CheckpointError line before anything is allocated."""
    try:
        shapes = {k: tuple(v.shape) for k, v in build_model(model_cfg, clip_activation, "meta")
                  .state_dict().items()}
    except StaleError as e:
        raise CheckpointError(f"{path}: bad checkpoint: {e}") from None
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    wrong = [k for k in shapes if k in state and tuple(state[k].shape) != shapes[k]]
    if missing or unexpected or wrong:
        first = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the config makes it {shapes[wrong[0]]}" if wrong
                 else f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({first}); the checkpoint "
                              "is damaged or of another shape")
    model = build_model(model_cfg, clip_activation)
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the trained model (eval mode, on ``device``) and its description from a checkpoint."""
    ckpt, info = read_checkpoint(path)
    model = load_weights(path, ckpt["state_dict"], info.model_config, info.clip_activation)
    return model.to(device).eval(), info
