"""The per-video steps both extraction pipelines share: decode one video into messages, encode a chunk, make the
finished :class:`VideoResult` and its sidecar."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from stale_cli import __version__
from stale_cli.errors import DecodeError, OutOfMemory, ResourceError, StaleError, out_of_memory
from stale_cli.features.video import FrameSampler, VideoInfo, num_samples
from stale_cli.fileio import source_identity
from stale_cli.sidecar import FEATURE_FORMAT, FeatureMeta

log = logging.getLogger(__name__)

@dataclass
class VideoResult:
    index: int  # position in the input list
    path: Path
    features: Optional[np.ndarray] = None  # float16 (T, D)
    meta: Optional[FeatureMeta] = None
    error: Optional[StaleError] = None
    warnings: list = field(default_factory=list)
    claimed: bool = True  # False: ``claim`` refused the video (another run is making it); nothing was decoded


def sidecar(path: Path, info: VideoInfo, fps: float, clip, num_rows: int) -> FeatureMeta:
    """The ``<video_id>.json`` content for a video (docs/formats.md, :mod:`stale_cli.sidecar`, with provenance)."""
    ident = source_identity(path)  # resolved path, size and mtime: what a rerun compares
    return FeatureMeta(
        fps=fps,
        timestamps=tuple(round(k / fps, 6) for k in range(num_rows)),
        duration=round(info.duration, 6),
        source=ident["source"],
        source_size=ident["source_size"],
        source_mtime_ns=ident["source_mtime_ns"],
        clip_model=clip.name,
        clip_weights=clip.weights,
        clip_weights_sha256=clip.weights_sha256,
        clip_activation=clip.activation,
        precision=clip.precision,
        num_frames=info.num_frames,
        num_rows=num_rows,
        embed_dim=clip.embed_dim,
        image_size=clip.image_size,
        start_time=round(info.start_time, 6),
        native_fps=info.native_fps,
        frame_size=tuple(info.frame_size) if info.frame_size else None,
        rotation=info.orientation.rotation,
        mirrored=info.orientation.mirror,
        decoder=info.decoder,
        warnings=tuple(info.warnings),
        stale_version=__version__,
        feature_format=FEATURE_FORMAT,
    )


def _encode(clip, frames, batch_size: int, path) -> np.ndarray:
    """float16 ``(n, D)`` embeddings of a chunk. CUDA running out of memory ends the run with one line; the
    machine's memory running out fails this video (:class:`OutOfMemory`), the batch goes on."""
    try:
        return clip.encode_images(frames, batch_size=batch_size).half().numpy()
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"{path}: CUDA out of memory encoding {batch_size} frames at once; rerun with a smaller "
            f"--batch-size (e.g. {max(1, batch_size // 2)})"
        ) from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise OutOfMemory(
            f"{path}: out of memory encoding {batch_size} frames at once; rerun it with a smaller --batch-size "
            f"(e.g. {max(1, batch_size // 2)})"
        ) from None


def _claim(claim, i: int):
    """``(claimed, error)``: whether video i is ours to make; a lock file that cannot be written (a full disk)
    fails that video only, the batch goes on."""
    try:
        return (claim is None or claim(i)), None
    except StaleError as e:
        return False, e


def _decode_items(i: int, path: Path, fps: float, transform, batch_size: int, decoder: str) -> Iterator[tuple]:
    """The messages of one video, for a decode thread or process: ("chunk", i, FrameChunk) ..., then
    ("done", i, VideoInfo) or ("error", i, StaleError)."""
    sampler = FrameSampler(path, fps, transform=transform, chunk_size=batch_size, decoder=decoder)
    try:
        for chunk in sampler:
            yield ("chunk", i, chunk)
        yield ("done", i, sampler.info)
    except StaleError as e:
        yield ("error", i, e)
    except Exception as e:  # a decoder crash on one file must not end the batch
        log.debug("decoding %s failed", path, exc_info=True)
        yield ("error", i, DecodeError(f"{path}: decoding failed ({type(e).__name__}: {e})"))


def _result(i: int, path: Path, rows: list, info: VideoInfo, fps: float, clip) -> VideoResult:
    """The finished VideoResult of video ``i`` from its encoded chunks ``rows`` [(n, D) float16]."""
    feats = np.concatenate(rows) if rows else np.zeros((0, clip.embed_dim), np.float16)  # (T, D)
    assert feats.shape[0] == info.num_samples == num_samples(info.duration, fps), (feats.shape, info)
    if not np.isfinite(feats).all():  # features no command could read back (read_features refuses them)
        bad = int((~np.isfinite(feats).all(axis=1)).sum())
        return VideoResult(i, Path(path), error=DecodeError(
            f"{path}: CLIP gave NaN or infinite features for {bad} of {len(feats)} frames; check --clip-weights "
            "and --precision (fp16 can overflow: try --precision fp32)"))
    meta = sidecar(path, info, fps, clip, feats.shape[0])
    return VideoResult(i, Path(path), features=feats, meta=meta, warnings=list(info.warnings))
