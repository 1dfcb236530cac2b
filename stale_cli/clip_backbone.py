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
from stale_cli.errors import WeightsError

log = logging.getLogger(__name__)


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

    ``weights`` is the string recorded in feature sidecars (the pretrained tag, the file path, or "random").
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

    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Image embeddings (not L2-normalised), float32 ``(N, embed_dim)`` on CPU.

        ``images``: uint8 RGB frames ``(N, H, W, 3)`` of any size, or an already preprocessed float tensor
        ``(N, 3, S, S)``. Encoded ``batch_size`` at a time under inference mode (autocast on CUDA).
        """
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size]
                x = self.preprocess(x) if x.dtype == torch.uint8 else x.to(self.device)  # (b, 3, S, S)
                out.append(self.model.encode_image(x).float().cpu())  # (b, C)
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)  # (N, C)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings (not L2-normalised), float32 ``(K, embed_dim)`` on CPU, one row per string."""
        tokens = self.tokenizer(list(texts)).to(self.device)  # (K, 77)
        with torch.inference_mode(), self._autocast():
            return self.model.encode_text(tokens).float().cpu()  # (K, C)


def _weights_error(model_name: str, weights: str, why: str) -> WeightsError:
    return WeightsError(
        f"cannot get CLIP weights {weights!r} for {model_name} ({why}). Either go online once so open_clip can "
        f"download and cache them, or pass --clip-weights PATH (or set {CLIP_WEIGHTS_ENV}=PATH) to a local "
        "weights file (e.g. open_clip_pytorch_model.bin from the Hugging Face hub, or a torch.save'd state dict)"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_clip(
    model_name: str = "ViT-B-16",
    weights: Optional[str | os.PathLike] = "openai",
    device: str | torch.device = "cpu",
    cache_dir: Optional[str] = None,
) -> ClipBackbone:
    """Build ``model_name`` with ``weights`` and return it as a :class:`ClipBackbone` in eval mode on ``device``.

    ``weights``: an open_clip pretrained tag for the model ("openai", "laion2b_s34b_b88k", ...; downloaded once
    through open_clip and cached by it), a path to a local file in any form open_clip's ``pretrained=`` accepts,
    or ``None`` for random initialisation (tests and benchmarks only). Raises :class:`WeightsError` when the
    weights cannot be had, naming both ways out.
    """
    import open_clip

    device = torch.device(device)
    if model_name not in open_clip.list_models():
        raise WeightsError(
            f"unknown --clip-model {model_name!r}; open_clip knows e.g. ViT-B-16, ViT-B-32, ViT-L-14 "
            "(see open_clip.list_models())"
        )
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
                raise _weights_error(model_name, weights, _first_line(e)) from e
            pretrained, recorded = weights, weights
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise WeightsError(
                    f"--clip-weights {weights!r} is neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {', '.join(tags) or 'none'}); pass a path to a local weights file"
                )
            pretrained, recorded = str(path), str(path.resolve())
            if open_clip.get_pretrained_cfg(model_name, "openai").get("quick_gelu"):
                log.info(
                    "%s: if %s holds OpenAI's weights, use --clip-model %s-quickgelu (OpenAI's models use QuickGELU)",
                    model_name, path, model_name,
                )
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        if pretrained is None:
            raise
        raise WeightsError(
            f"cannot load CLIP weights {recorded} into {model_name}: {_first_line(e)}; "
            "pass a weights file made for this --clip-model"
        ) from e
    model.eval()
    pp = model.visual.preprocess_cfg
    size = pp["size"]
    size = size if isinstance(size, int) else size[0]
    embed_dim = getattr(model.visual, "output_dim", None)
    if embed_dim is None:  # towers that do not say (timm, HF): ask with one dummy image
        embed_dim = int(model.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[-1])
    log.debug("loaded CLIP %s (%s) on %s, input %d, embed %d", model_name, recorded, device, size, embed_dim)
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
    )
