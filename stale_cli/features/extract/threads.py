"""The extraction pipeline with a decoding thread (see :mod:`stale_cli.features.extract`): :func:`iter_features`, which
hands over to decoding processes for ``workers > 1``, and :func:`extract_video`."""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from stale_cli.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FEATURE_FPS
from stale_cli.errors import InputError, OutOfMemory
from stale_cli.features.extract.processes import _iter_features_processes
from stale_cli.features.extract.steps import VideoResult, _claim, _decode_items, _encode, _result
from stale_cli.sidecar import MAX_FEATURE_FPS, MIN_FEATURE_FPS, FeatureMeta

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 3  # decoded chunks waiting for the encoder (bounds memory: 3 x batch x S x S x 3 bytes)

_DONE = object()


def _decode_worker(paths, fps, clip, batch_size, decoder, out: queue.Queue, stop: threading.Event, claim) -> None:
    """Background thread: put ("chunk", i, FrameChunk) ..., then ("done", i, info) or ("error", i, exc) per video;
    ("unclaimed", i, None) for a video ``claim(i)`` refuses."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    for i, path in enumerate(paths):
        claimed, error = _claim(claim, i)
        if error is not None:
            if not put(("error", i, error)):
                return
            continue
        if not claimed:
            if not put(("unclaimed", i, None)):
                return
            continue
        for item in _decode_items(i, path, fps, clip.resize_frames, batch_size, decoder):
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
    claim: Optional[Callable[[int], bool]] = None,
    workers: int = 1,
) -> Iterator[VideoResult]:
    """Features of each video, in input order, one :class:`VideoResult` per path (``error`` set on failure).

    ``on_frames(n)`` is called after every encoded batch (progress). Decoding runs in a background thread, which
    calls ``claim(i)`` (when given) just before it starts on video ``i``: False skips it (``claimed=False``); or
    with ``workers > 1`` in that many processes (never more than there are videos), ``claim`` then called just
    before video ``i`` is handed to one.
    """
    if not MIN_FEATURE_FPS <= fps <= MAX_FEATURE_FPS:
        raise InputError(f"--fps must be a number in [{MIN_FEATURE_FPS:g}, {MAX_FEATURE_FPS:g}], got {fps}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    workers = min(workers, len(paths))
    if workers > 1:
        yield from _iter_features_processes(paths, clip, fps, batch_size, decoder, on_frames, workers, claim)
        return
    q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    worker = threading.Thread(
        target=_decode_worker, args=(list(paths), fps, clip, batch_size, decoder, q, stop, claim), daemon=True,
        name="stale-decode",
    )
    worker.start()
    rows: list = []
    failed: Optional[OutOfMemory] = None  # the current video's frames did not fit in memory
    try:
        while True:
            kind, i, payload = q.get()
            if kind is _DONE:
                break
            if kind == "chunk":
                if failed is None:
                    try:
                        rows.append(_encode(clip, payload.frames, batch_size, paths[i]))  # (n, D)
                    except OutOfMemory as e:
                        failed, rows = e, []
                if on_frames:
                    on_frames(len(payload.indices))
                continue
            if kind == "error" or failed is not None:
                rows = []
                yield VideoResult(i, Path(paths[i]), error=failed or payload)
                failed = None
                continue
            if kind == "unclaimed":
                yield VideoResult(i, Path(paths[i]), claimed=False)
                continue
            result = _result(i, paths[i], rows, payload, fps, clip)
            rows = []
            yield result
    finally:
        stop.set()
        worker.join()


def extract_video(
    path: str | os.PathLike, clip, fps: float = DEFAULT_FEATURE_FPS, batch_size: int = DEFAULT_BATCH_SIZE, **kw
) -> tuple[np.ndarray, FeatureMeta]:
    """Features of one video in memory: ``(float16 (T, D), sidecar)``. Raises DecodeError if undecodable."""
    (result,) = list(iter_features([Path(path)], clip, fps, batch_size, **kw))
    if result.error is not None:
        raise result.error
    for w in result.warnings:
        log.warning("%s: %s", path, w)
    return result.features, result.meta
