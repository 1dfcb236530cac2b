"""The CLIP backbone: open_clip model + weights, batched tensor preprocessing, image and text encoding.

:func:`load_clip` builds an open_clip model with the weights a user asked for and wraps it in
:class:`ClipBackbone`. Preprocessing runs on batches of uint8 frames as tensors and gives the same input as
open_clip's own PIL-based ``preprocess`` transform for the model (resize the shorter side with bicubic
interpolation and antialiasing, centre crop, normalise with the model's mean and std); see
``tests/test_clip_backbone.py`` for the parity test and its tolerance.

Nothing is loaded or downloaded at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from stale_cli import CLIP_WEIGHTS_ENV
from stale_cli.errors import WeightsError, first_line
from stale_cli.torchfile import archive_problem, nonfinite_tensor

log = logging.getLogger(__name__)

GELU, QUICK_GELU = "gelu", "quick_gelu"  # CLIP's MLP activations; OpenAI trained its CLIPs with QuickGELU
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic


def cpu_has_native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether this CPU does bf16 arithmetic natively (AMX-BF16 or AVX512-BF16), read at run time.

    ``cpuinfo``: the text of /proc/cpuinfo (read here when None). Where there is no /proc/cpuinfo (macOS,
    Windows) the answer is False: torch would emulate bf16 there, which is slower than fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(f in flags for f in CPU_BF16_FLAGS)


def resolve_precision(
    precision: str, device: str | torch.device, native_bf16: Callable[[], bool] = cpu_has_native_bf16
) -> str:
    """``auto | fp32 | bf16 | fp16`` -> the dtype name CLIP's weights are cast to on ``device``.

    ``auto``: fp16 on CUDA, bf16 on CPUs with native bf16 (``native_bf16()``), fp32 otherwise (Apple GPUs,
    other CPUs). Casting the weights, not autocast: on a CPU autocast bf16 ran slower than fp32 (issue 8).
    """
    from stale_cli.errors import InputError

    precision = precision.strip().lower()
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type == "cpu" and native_bf16():
            return "bf16"
        return "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return precision


def _model_quick_gelu(model_name: str) -> bool:
    import open_clip

    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def required_activation(model_name: str, weights: Optional[str]) -> Optional[str]:
    """The activation ``model_name`` must run with to hold ``weights``: QuickGELU when the name is a
    ``-quickgelu`` variant or open_clip's config of the pretrained tag says so, GELU for other tags; None when
    the weights do not say (a local file, random weights)."""
    import open_clip

    if model_name not in open_clip.list_models():
        return None
    if _model_quick_gelu(model_name):
        return QUICK_GELU
    cfg = open_clip.get_pretrained_cfg(model_name, str(weights)) if weights else {}
    if not cfg:
        return None
    return QUICK_GELU if cfg.get("quick_gelu", False) else GELU


def activation_of(module: torch.nn.Module) -> str:
    """The activation an open_clip tower (or a model holding one) was built with."""
    from open_clip.transformer import QuickGELU

    return QUICK_GELU if any(isinstance(m, QuickGELU) for m in module.modules()) else GELU


def recorded_activation(clip_model: Optional[str], recorded: Optional[str]) -> str:
    """The activation a feature file or checkpoint was made with: the one it records, else (files from before
    stale recorded it) the one the architecture ``clip_model`` has by its name, which is what ran."""
    return recorded or (QUICK_GELU if clip_model and _model_quick_gelu(clip_model) else GELU)


def activation_problem(
    clip_model: Optional[str], clip_weights: Optional[str], recorded: Optional[str]
) -> Optional[str]:
    """Why features or a checkpoint described by (``clip_model``, ``clip_weights``, recorded activation) were
    computed by another network than the weights were trained as, or None when they are fine.

    Files written before stale recorded the activation (``recorded`` None) ran ``ViT-B-16`` with OpenAI's
    weights with GELU: those are the ones caught.
    """
    if not clip_model:
        return None
    needed = required_activation(clip_model, clip_weights)
    used = recorded_activation(clip_model, recorded)
    if needed is None or needed == used:
        return None
    how = "" if recorded else " (an older stale, before the activation was fixed and recorded)"
    return (f"made with CLIP {clip_model} running {used.replace('_', '')}{how}, but the {clip_weights!r} weights "
            f"were trained with {needed.replace('_', '')}")


def feature_activation_error(meta, expected: Optional[str] = None) -> Optional[str]:
    """Why features with sidecar ``meta`` (a FeatureMeta or its JSON object) must not be used with a text tower
    running ``expected`` (None: any), or None. Caught: features from a CLIP run with the wrong activation for its
    weights, and a mix of the two."""
    from stale_cli.sidecar import FeatureMeta

    meta = FeatureMeta.of(meta)
    problem = activation_problem(meta.clip_model, meta.clip_weights, meta.clip_activation)
    if problem:
        return f"features {problem}; extract them again (stale extract-features --overwrite)"
    used = recorded_activation(meta.clip_model, meta.clip_activation)
    if expected and used != expected:
        return (f"features were made with CLIP running {used.replace('_', '')} but the text encoder runs "
                f"{expected.replace('_', '')}; features and text must come from the same CLIP")
    return None


def resize_and_crop(frames: torch.Tensor, size: int, resize_mode: str = "shortest") -> torch.Tensor:
    """uint8 frames ``(N, H, W, 3)`` -> uint8 ``(N, size, size, 3)``, as open_clip's inference transform does.

    ``shortest``: resize the shorter side to ``size`` (bicubic, antialiased, rounded to uint8 like PIL) and
    centre crop; ``squash``: resize both sides to ``size``; ``longest``: resize the longer side to ``size`` and
    pad the centre with zeros. Frames already ``size`` x ``size`` pass through untouched.
    """
    from torchvision.transforms.v2 import functional as TF

    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
    N, H, W, _ = frames.shape
    if H == size and W == size:
        return frames
    x = frames.permute(0, 3, 1, 2)  # (N, 3, H, W)
    bicubic = TF.InterpolationMode.BICUBIC
    if resize_mode == "shortest":
        x = TF.resize(x, [size], interpolation=bicubic, antialias=True)  # (N, 3, >=size, >=size)
        x = TF.center_crop(x, [size, size])  # (N, 3, size, size)
    elif resize_mode == "squash":
        x = TF.resize(x, [size, size], interpolation=bicubic, antialias=True)  # (N, 3, size, size)
    elif resize_mode == "longest":
        scale = size / max(H, W)
        new_hw = [max(1, round(H * scale)), max(1, round(W * scale))]
        x = TF.resize(x, new_hw, interpolation=bicubic, antialias=True)  # (N, 3, <=size, <=size)
        x = TF.center_crop(x, [size, size])  # zero-pads the short side: (N, 3, size, size)
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    return x.permute(0, 2, 3, 1).contiguous()  # (N, size, size, 3)


@dataclass
class ClipBackbone:
    """An open_clip CLIP model in eval mode and what it takes to feed it.

    ``weights`` is the string recorded in feature sidecars (the pretrained tag, the file path, or "random");
    ``weights_sha256`` the content hash of a weights file (None for a tag): :mod:`stale_cli.clip_identity`.
    """

    model: Any  # open_clip CLIP, eval mode, on `device`
    name: str
    weights: str
    tokenizer: Callable
    image_size: int
    embed_dim: int
    mean: tuple
    std: tuple
    resize_mode: str
    device: torch.device
    activation: str = GELU  # the towers' MLP activation: "quick_gelu" (OpenAI's weights) or "gelu"
    precision: str = "fp32"  # the weights' dtype: fp32 | bf16 | fp16 (see resolve_precision)
    weights_sha256: Optional[str] = None

    @property
    def weights_id(self):
        from stale_cli.clip_identity import WeightsId

        return WeightsId(self.weights, self.weights_sha256)

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def resize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, S, S, 3)`` with S = image_size (the geometric part of preprocess)."""
        return resize_and_crop(frames, self.image_size, self.resize_mode)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``(N, H, W, 3)`` -> normalised float32 ``(N, 3, S, S)`` on the model's device."""
        x = self.resize_frames(frames).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Image embeddings (not L2-normalised), float32 ``(N, embed_dim)`` on CPU.

        ``images``: uint8 RGB frames ``(N, H, W, 3)`` of any size, or an already preprocessed float tensor
        ``(N, 3, S, S)``. Encoded ``batch_size`` at a time under inference mode, in the weights' precision.
        """
        out = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size]
                x = self.preprocess(x) if x.dtype == torch.uint8 else x.to(self.device)  # (b, 3, S, S)
                x = x.to(self.dtype)
                out.append(self.model.encode_image(x).float().cpu())  # (b, C)
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)  # (N, C)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (not L2-normalised), float32 ``(K, embed_dim)`` on CPU, one row per string."""
        tokens = self.tokenizer(list(texts)).to(self.device)  # (K, 77)
        with torch.inference_mode():
            return self.model.encode_text(tokens).float().cpu()  # (K, C)


def _weights_error(model_name: str, weights: str, why: str) -> WeightsError:
    return WeightsError(
        f"cannot get CLIP weights {weights!r} for {model_name} ({why}). Either go online once so open_clip can "
        f"download and cache them, or pass --clip-weights PATH (or set {CLIP_WEIGHTS_ENV}=PATH) to a local "
        "weights file (e.g. open_clip_pytorch_model.bin from the Hugging Face hub, or a torch.save'd state dict)"
    )


def looks_like_openai_weights(path: Path) -> bool:
    """Whether a local weights file looks like OpenAI's CLIP: "openai" in its path (OpenAI's files on the Hugging
    Face hub, e.g. ``timm/vit_base_patch16_clip_224.openai``) or a TorchScript archive, the form OpenAI ships."""
    import zipfile

    if "openai" in str(path).lower():
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist()[:200])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


@contextlib.contextmanager
def random_init_warning_silenced():
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" (a root-logger warning) while a
    model is built whose weights stale loads right after (a checkpoint): there it is untrue."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "initialized randomly" not in record.getMessage()

    drop, root = _Drop(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def weights_label(model_name: str, weights: Optional[str | os.PathLike]) -> str:
    """What :func:`load_clip` records as ``ClipBackbone.weights`` for these arguments, without loading anything:
    the pretrained tag, else the resolved path of the file ("random" for None)."""
    import open_clip

    if weights is None:
        return "random"
    if model_name in open_clip.list_models() and open_clip.get_pretrained_cfg(model_name, str(weights)):
        return str(weights)
    return str(Path(weights).expanduser().resolve())


def load_clip(
    model_name: str = "ViT-B-16",
    weights: Optional[str | os.PathLike] = "openai",
    device: str | torch.device = "cpu",
    cache_dir: Optional[str] = None,
    precision: str = "fp32",
) -> ClipBackbone:
    """Build ``model_name`` with ``weights`` and return it as a :class:`ClipBackbone` in eval mode on ``device``.

    ``weights``: an open_clip pretrained tag for the model ("openai", "laion2b_s34b_b88k", ...; downloaded once
    through open_clip and cached by it), a path to a local file in any form open_clip's ``pretrained=`` accepts,
    or ``None`` for random initialisation (tests and benchmarks only). Raises :class:`WeightsError` when the
    weights cannot be had, naming both ways out. A tag whose open_clip config says QuickGELU (OpenAI's) builds
    both towers with QuickGELU, the activation those weights were trained with. ``precision``: see
    :func:`resolve_precision`; bf16/fp16 cast the weights as open_clip does (layer norms stay fp32).
    """
    import open_clip

    device = torch.device(device)
    precision = resolve_precision(precision, device)
    quick_gelu = False
    if model_name not in open_clip.list_models():
        raise WeightsError(
            f"unknown --clip-model {model_name!r}; open_clip knows e.g. ViT-B-16, ViT-B-32, ViT-L-14 "
            "(see open_clip.list_models())"
        )
    cfg = None
    if weights is None:
        pretrained, recorded = None, "random"
    else:
        weights = str(weights)
        cfg = open_clip.get_pretrained_cfg(model_name, weights)
        if cfg:
            # Fetch (or find in the cache) exactly what create_model would, so that a failure to get the file can
            # be told apart from a failure to build the model.
            try:
                open_clip.download_pretrained(cfg, cache_dir=cache_dir)
            except (OSError, RuntimeError, ValueError) as e:  # huggingface_hub/urllib errors subclass these
                raise _weights_error(model_name, weights, first_line(e)) from e
            pretrained, recorded = weights, weights
            quick_gelu = bool(cfg.get("quick_gelu", False))
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise WeightsError(
                    f"--clip-weights {weights!r} is neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {', '.join(tags) or 'none'}); pass a path to a local weights file"
                )
            problem = archive_problem(path)
            if problem is not None:
                raise WeightsError(f"--clip-weights {path}: {problem}")
            pretrained, recorded = str(path), str(path.resolve())
            openai_cfg = open_clip.get_pretrained_cfg(model_name, "openai")
            if openai_cfg.get("quick_gelu") and not _model_quick_gelu(model_name):
                # Said where the file looks like OpenAI's (else it is noise on every run with a local file).
                log.log(
                    logging.INFO if looks_like_openai_weights(path) else logging.DEBUG,
                    "%s: if %s holds OpenAI's weights, use --clip-model %s-quickgelu (OpenAI's models use QuickGELU)",
                    model_name, path, model_name,
                )
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device, cache_dir=cache_dir,
                                       force_quick_gelu=quick_gelu, precision=precision)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        if pretrained is None:
            raise
        raise WeightsError(
            f"cannot load CLIP weights {recorded} into {model_name}: {first_line(e)}; "
            "pass a weights file made for this --clip-model"
        ) from e
    model.eval()
    if pretrained is not None and not cfg:  # a local file (a tag is open_clip's own download)
        broken = nonfinite_tensor(model.state_dict())
        if broken is not None:  # every feature would be NaN: detections silently none
            raise WeightsError(f"CLIP weights {recorded}: {broken} holds NaN or infinite values; the file is "
                               "damaged, download or convert it again")
    pp = model.visual.preprocess_cfg
    size = pp["size"]
    size = size if isinstance(size, int) else size[0]
    embed_dim = getattr(model.visual, "output_dim", None)
    if embed_dim is None:  # towers that do not say (timm, HF): ask with one dummy image
        dummy = torch.zeros(1, 3, size, size, device=device, dtype=PRECISIONS[precision])
        embed_dim = int(model.encode_image(dummy).shape[-1])
    activation = activation_of(model)
    from stale_cli.clip_identity import weights_sha256

    digest = weights_sha256(recorded)  # a file's content hash (computed once per file version); None for a tag
    log.debug("loaded CLIP %s (%s, %s, %s) on %s, input %d, embed %d", model_name, recorded, activation, precision,
              device, size, embed_dim)
    return ClipBackbone(
        model=model,
        name=model_name,
        weights=recorded,
        tokenizer=open_clip.get_tokenizer(model_name),
        image_size=int(size),
        embed_dim=int(embed_dim),
        mean=tuple(float(m) for m in pp["mean"]),
        std=tuple(float(s) for s in pp["std"]),
        resize_mode=pp.get("resize_mode", "shortest"),
        device=device,
        activation=activation,
        precision=precision,
        weights_sha256=digest,
    )
