"""Self-describing checkpoints (docs/formats.md).

A checkpoint is a plain dict saved with ``torch.save`` that loads with ``torch.load(weights_only=True)``:
format name and version, the dataset preset it was trained with, the model/loss/data/detect configs as plain
dicts, the training class names, the feature rate and width, the CLIP model name (and which CLIP weights
initialised the text tower), the state dict, and for ``--resume`` the epoch, optimizer state and training
history. ``stale detect --checkpoint x.pt`` needs nothing else: :func:`load_checkpoint` rebuilds the model from
an architecture-only open_clip model (no CLIP weights are downloaded; the text tower's weights are in the state
dict).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stale_cli import datasets
from stale_cli.data.windows import DataConfig
from stale_cli.errors import CheckpointError, StaleError, first_line
from stale_cli.fileio import atomic_path
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.postprocess import DetectConfig

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
    # The dataset preset (stale_cli.datasets) it was trained with; checkpoints written before they recorded it
    # get the one their data config belongs to.
    dataset: str = datasets.THUMOS14.name
    clip_weights_sha256: str | None = None  # content hash of a weights file in clip_weights (None: a tag, or older)

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
    **extra: Any,
) -> None:
    """Write a checkpoint atomically. ``extra`` (optimizer state, history, ...) must hold only plain types/tensors.

    ``clip_weights_sha256``: the content hash of the weights file ``clip_weights`` names (None for a tag).
    ``dataset``: the dataset preset trained with (default: the one ``data_cfg`` belongs to); ``detect_cfg``:
    inference settings to record (default: that dataset's).
    """
    from stale_cli.clip_backbone import activation_of

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".stale-write-test."):
            pass
    except OSError as e:
        raise CheckpointError(f"--output {path}: cannot write to {path.parent} ({e.strerror or e})") from e


def is_stale_checkpoint(path: str | Path) -> bool:
    """Cheaply, whether ``path`` holds a checkpoint of ours: its dict's format key, read with the tensors memory-
    mapped (not read), so an unrelated 100 MB ``.pt`` costs only its small pickle."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # anything torch cannot read as a weights-only zip checkpoint is not ours
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def _config(cls, d, name: str, path: Path):
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: checkpoint has no {name}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{path}: {name} has fields {unknown} this version of stale does not know; upgrade stale")
    try:
        return cls(**d)
    except (TypeError, StaleError) as e:
        raise CheckpointError(f"{path}: bad {name} ({e})") from None


def _optional_str(value) -> str | None:
    return value if isinstance(value, str) else None


def read_checkpoint(path: str | Path) -> tuple[dict, CheckpointInfo]:
    """Load and validate a checkpoint file on the CPU: (raw dict incl. state_dict, info)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
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
    from stale_cli.clip_backbone import activation_problem, recorded_activation

    clip_model, clip_weights = str(ckpt.get("clip_model", "")), str(ckpt.get("clip_weights", ""))
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
        d = ckpt["detect_config"]
        d = dict(d, thetas=tuple(d["thetas"])) if isinstance(d, dict) and isinstance(d.get("thetas"), list) else d
        detect_config = _config(DetectConfig, d, "detect config", path)
    model_config = ckpt.get("model_config")
    if isinstance(model_config, dict) and "context_init" not in model_config:
        model_config = dict(model_config, context_init="")  # before 0.3 the context always started random
    info = CheckpointInfo(
        model_config=_config(ModelConfig, model_config, "model config", path),
        loss_config=_config(LossConfig, ckpt.get("loss_config"), "loss config", path),
        data_config=data_config,
        detect_config=detect_config,
        dataset=spec.name,
        class_names=tuple(ckpt.get("class_names") or ()),
        feature_fps=float(ckpt.get("feature_fps", 0.0)),
        feature_dim=int(ckpt.get("feature_dim", 0)),
        clip_model=clip_model,
        clip_weights=clip_weights,
        clip_weights_sha256=_optional_str(ckpt.get("clip_weights_sha256")),
        epoch=int(ckpt.get("epoch", 0)),
        clip_activation=recorded_activation(clip_model, ckpt.get("clip_activation")),
        extra=dict(ckpt.get("extra") or {}),
    )
    if not info.class_names:
        raise CheckpointError(f"{path}: checkpoint has no class names")
    return ckpt, info


def build_model(model_cfg: ModelConfig, clip_activation: str = "gelu") -> torch.nn.Module:
    """A STALE model with an architecture-only CLIP text tower (random weights; nothing is downloaded), built
    with ``clip_activation`` (the checkpoint's ``clip_activation``)."""
    import open_clip

    from stale_cli.clip_backbone import QUICK_GELU, random_init_warning_silenced
    from stale_cli.model.stale import STALE

    try:
        with random_init_warning_silenced():  # the state dict is loaded right after
            clip = open_clip.create_model(model_cfg.clip_model, pretrained=None,
                                          force_quick_gelu=clip_activation == QUICK_GELU)
    except RuntimeError as e:
        raise CheckpointError(f"unknown open_clip model {model_cfg.clip_model!r} in the checkpoint ({e})") from None
    return STALE(model_cfg, clip)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the trained model (eval mode, on ``device``) and its description from a checkpoint."""
    ckpt, info = read_checkpoint(path)
    model = build_model(info.model_config, info.clip_activation)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({str(e)[:300]})") from None
    return model.to(device).eval(), info
