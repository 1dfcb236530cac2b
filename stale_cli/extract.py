"""CLIP feature extraction: videos -> ``(T, D)`` float16 features sampled at ``fps``, in memory or on disk.

Pipeline: one background thread decodes (and resizes) the videos in order and fills a bounded queue with chunks
of ``batch_size`` frames; the calling thread takes them off and encodes each chunk as one batch. Decoding thus
runs ahead of encoding, also across video boundaries, and memory is bounded by the queue whatever the length.

On disk (DESIGN.md §3): ``<video_id>.npy`` float16 ``(T, D)``, row k = frame shown at ``k / fps`` seconds after
the first frame, and ``<video_id>.json`` (see :func:`sidecar`); the id is the file stem. Both are written
atomically, the sidecar last, so a video counts as done only when both exist: a rerun skips finished videos.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from stale_cli import __version__
from stale_cli.errors import DecodeError, InputError, StaleError
from stale_cli.fileio import write_features
from stale_cli.video import FrameSampler, VideoInfo, num_samples, probe_header

log = logging.getLogger(__name__)

DEFAULT_FEATURE_FPS = 4.0  # frames/s sampled for features; detect and train default to it too
DEFAULT_BATCH_SIZE = 32
FEATURE_FORMAT = 1  # version of the sidecar layout
QUEUE_CHUNKS = 3  # decoded chunks waiting for the encoder (bounds memory: 3 x batch x S x S x 3 bytes)


@dataclass
class VideoResult:
    index: int  # position in the input list
    path: Path
    features: Optional[np.ndarray] = None  # float16 (T, D)
    meta: Optional[dict] = None
    error: Optional[StaleError] = None
    warnings: list = field(default_factory=list)


def sidecar(path: Path, info: VideoInfo, fps: float, clip, num_rows: int) -> dict:
    """The ``<video_id>.json`` content for a video (DESIGN.md §3, plus provenance)."""
    return {
        "fps": fps,  # sampling rate of the rows, frames/s
        "timestamps": [round(k / fps, 6) for k in range(num_rows)],  # seconds from the first frame, per row
        "duration": round(info.duration, 6),  # seconds from the first frame to the end of the last
        "source": str(Path(path).resolve()),
        "clip_model": clip.name,
        "clip_weights": clip.weights,
        "num_frames": info.num_frames,  # frames decoded from the source
        "num_rows": num_rows,
        "embed_dim": clip.embed_dim,
        "image_size": clip.image_size,
        "start_time": round(info.start_time, 6),  # presentation time of the first frame in the file, seconds
        "native_fps": info.native_fps,
        "decoder": info.decoder,
        "warnings": list(info.warnings),
        "stale_version": __version__,
        "feature_format": FEATURE_FORMAT,
    }


_DONE = object()


def _decode_worker(paths, fps, clip, batch_size, decoder, out: queue.Queue, stop: threading.Event) -> None:
    """Background thread: put ("chunk", i, FrameChunk) ..., then ("done", i, info) or ("error", i, exc) per video."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    for i, path in enumerate(paths):
        sampler = FrameSampler(path, fps, transform=clip.resize_frames, chunk_size=batch_size, decoder=decoder)
        try:
            for chunk in sampler:
                if not put(("chunk", i, chunk)):
                    return
            item = ("done", i, sampler.info)
        except StaleError as e:
            item = ("error", i, e)
        except Exception as e:  # a decoder crash on one file must not end the batch
            log.debug("decoding %s failed", path, exc_info=True)
            item = ("error", i, DecodeError(f"{path}: decoding failed ({type(e).__name__}: {e})"))
        if not put(item):
            return
    put((_DONE, -1, None))


def iter_features(
    paths: Sequence[Path],
    clip,
    fps: float = DEFAULT_FEATURE_FPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    decoder: str = "auto",
    on_frames: Optional[Callable[[int], None]] = None,
) -> Iterator[VideoResult]:
    """Features of each video, in input order, one :class:`VideoResult` per path (``error`` set on failure).

    ``on_frames(n)`` is called after every encoded batch (progress). Decoding runs in a background thread.
    """
    if not fps > 0:
        raise InputError(f"--fps must be positive, got {fps}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    worker = threading.Thread(
        target=_decode_worker, args=(list(paths), fps, clip, batch_size, decoder, q, stop), daemon=True,
        name="stale-decode",
    )
    worker.start()
    rows: list = []
    try:
        while True:
            kind, i, payload = q.get()
            if kind is _DONE:
                break
            if kind == "chunk":
                rows.append(clip.encode_images(payload.frames, batch_size=batch_size).half().numpy())  # (n, D)
                if on_frames:
                    on_frames(len(payload.indices))
                continue
            if kind == "error":
                rows = []
                yield VideoResult(i, Path(paths[i]), error=payload)
                continue
            info: VideoInfo = payload
            feats = np.concatenate(rows) if rows else np.zeros((0, clip.embed_dim), np.float16)  # (T, D)
            rows = []
            assert feats.shape[0] == info.num_samples == num_samples(info.duration, fps), (feats.shape, info)
            meta = sidecar(paths[i], info, fps, clip, feats.shape[0])
            yield VideoResult(i, Path(paths[i]), features=feats, meta=meta, warnings=list(info.warnings))
    finally:
        stop.set()
        worker.join()


def extract_video(
    path: str | os.PathLike, clip, fps: float = DEFAULT_FEATURE_FPS, batch_size: int = DEFAULT_BATCH_SIZE, **kw
) -> tuple[np.ndarray, dict]:
    """Features of one video in memory: ``(float16 (T, D), sidecar dict)``. Raises DecodeError if undecodable."""
    (result,) = list(iter_features([Path(path)], clip, fps, batch_size, **kw))
    if result.error is not None:
        raise result.error
    for w in result.warnings:
        log.warning("%s: %s", path, w)
    return result.features, result.meta


def video_ids(paths: Sequence[Path]) -> list[str]:
    """Output name of each input: its stem, or, where several inputs share a stem, ``stem-<8 hex>`` from a hash of
    the absolute path, so that no two inputs of a batch write the same file."""
    stems = [Path(p).stem for p in paths]
    counts: dict = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [
        s if counts[s] == 1 else f"{s}-{zlib.crc32(str(Path(p).resolve()).encode('utf-8')):08x}"
        for s, p in zip(stems, paths)
    ]


def check_writable(out_dir: Path) -> None:
    """Raise InputError unless files can be created in ``out_dir`` (made if missing)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".stale-write-test."):
            pass
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot write there ({e.strerror or e})") from e


def _finished(npy: Path, path: Path, fps: float, clip) -> Optional[str]:
    """None if ``npy`` + sidecar hold this video's features with these settings; else why not ("" = absent)."""
    meta_path = npy.with_suffix(".json")
    if not (npy.is_file() and meta_path.is_file()):
        return ""
    import json

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""  # an unreadable sidecar is redone
    wanted = {"fps": fps, "clip_model": clip.name, "clip_weights": clip.weights}
    diff = [f"{k} {meta.get(k)!r} (asked: {v!r})" for k, v in wanted.items() if meta.get(k) != v]
    if Path(str(meta.get("source", ""))).name != path.name:
        diff.append(f"source {meta.get('source')!r}")
    return "; ".join(diff) if diff else None


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)  # [(path, message)]
    frames: int = 0  # frames encoded
    seconds: float = 0.0  # wall-clock time

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def extract_many(
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    clip,
    fps: float = DEFAULT_FEATURE_FPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    decoder: str = "auto",
    ids: Optional[Sequence[str]] = None,
    on_warning: Callable[[str], None] = log.warning,
    on_error: Callable[[str], None] = log.error,
) -> ExtractSummary:
    """Write ``<id>.npy`` + ``<id>.json`` into ``out_dir`` for every video; go on past bad files.

    ``ids``: output names (default :func:`video_ids` of ``paths``; pass those of the whole batch when ``paths``
    is a shard of it, so names do not depend on the shard). A video whose files exist with the same settings is
    skipped unless ``overwrite``; files with other settings are a failure (never silently replaced).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_writable(out_dir)
    paths = [Path(p) for p in paths]
    ids = list(ids) if ids is not None else video_ids(paths)
    assert len(ids) == len(paths)
    summary = ExtractSummary()
    todo, todo_ids = [], []
    for path, vid in zip(paths, ids):
        if vid != path.stem:
            on_warning(f"{path}: another input has the same name; writing it as {vid}.npy")
        npy = out_dir / f"{vid}.npy"
        why = None if overwrite else _finished(npy, path, fps, clip)
        if why is None and not overwrite:
            summary.skipped += 1
        elif why:
            summary.failed.append((path, f"{npy} exists with other settings: {why}; pass --overwrite or another --out"))
            on_error(f"{path}: {summary.failed[-1][1]}")
        else:
            todo.append(path)
            todo_ids.append(vid)
    total = 0
    for p in todo:
        _, end = probe_header(p)
        total += num_samples(end, fps) if end else 0
    bar = tqdm(total=total or None, unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    report = tqdm.external_write_mode if progress else contextlib.nullcontext
    try:
        for result in iter_features(todo, clip, fps, batch_size, decoder, on_frames=bar.update):
            path = result.path
            if result.error is not None:
                summary.failed.append((path, str(result.error)))
                with report():
                    on_error(str(result.error))
                continue
            with report():
                for w in result.warnings:
                    on_warning(f"{path}: {w}")
            try:
                write_features(out_dir / f"{todo_ids[result.index]}.npy", result.features, result.meta)
            except StaleError as e:
                summary.failed.append((path, str(e)))
                with report():
                    on_error(f"{path}: {e}")
                continue
            summary.done += 1
            summary.frames += result.features.shape[0]
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary
