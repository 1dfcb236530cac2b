"""CLIP feature extraction: videos -> ``(T, D)`` float16 features sampled at ``fps``, in memory or on disk.

Pipeline: one background thread decodes (and resizes) the videos in order and fills a bounded queue with chunks
of ``batch_size`` frames; the calling thread takes them off and encodes each chunk as one batch. Decoding thus
runs ahead of encoding, also across video boundaries, and memory is bounded by the queue whatever the length.
With ``workers > 1`` (a GPU encodes faster than one thread decodes) the decoding runs in that many processes
instead, each on its own video and its own pipe, all feeding the one encoder; results still come out in input
order (see :func:`_iter_features_processes`).

On disk (docs/formats.md): ``<video_id>.npy`` float16 ``(T, D)``, row k = frame shown at ``k / fps`` seconds after
the first frame, and ``<video_id>.json`` (see :func:`sidecar`); the id is the file stem. Both are written
atomically, the sidecar last, so a video counts as done only when both exist: a rerun skips finished videos.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import os
import queue
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from stale_cli import __version__
from stale_cli.clip_backbone import resize_and_crop
from stale_cli.clip_identity import WeightsId
from stale_cli.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FEATURE_FPS, default_workers  # noqa: F401 (re-exported)
from stale_cli.errors import DecodeError, InputError, OutOfMemory, ResourceError, StaleError, out_of_memory
from stale_cli.fileio import check_writable, read_json_or_none, source_identity, write_features
from stale_cli.locks import OutputLock
from stale_cli.sidecar import FEATURE_FORMAT, MAX_FEATURE_FPS, MIN_FEATURE_FPS, FeatureMeta, source_mismatch
from stale_cli.text import unicode_name
from stale_cli.video import FrameSampler, VideoInfo, num_samples, probe_header

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 3  # decoded chunks waiting for the encoder (bounds memory: 3 x batch x S x S x 3 bytes)
# With decoding processes: videos started ahead of the oldest unfinished one, per worker. Bounds the features
# held back for in-order output however many videos there are.
AHEAD_PER_WORKER = 2
WORKER_POLL_S = 0.5  # longest wait for a message from the decoding processes before handing out work again


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


_DONE = object()


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


def _decode_process(tasks, results, fps: float, transform, batch_size: int, decoder: str) -> None:
    """Body of a decoding process. ``tasks``/``results``: its own two pipe ends. For each (i, path) received,
    send ("chunk", i, uint8 array) ..., then ("done", i, VideoInfo) or ("error", i, StaleError); stop at None
    or when the encoder's end closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the encoder's to handle: it ends these processes
    torch.set_num_threads(1)  # the resize runs here; the encoder's process owns the cores' threads
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        i, path = task
        try:
            for kind, j, payload in _decode_items(i, path, fps, transform, batch_size, decoder):
                if kind == "chunk":
                    payload = payload.frames.numpy()  # (n, S, S, 3) uint8
                results.send((kind, j, payload))  # waits for the encoder
        except (BrokenPipeError, EOFError):  # the encoder's end is closed: nobody to decode for
            return


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


class _Decoders:
    """``workers`` decoding processes, each with its own task pipe and result pipe, given one video at a time.

    A pipe per process, not one shared queue: a process that dies mid-message (a crash in a decoder library)
    can corrupt or lock only its own pipe, and its death shows as end-of-file on it. A pipe holds little, so a
    process that runs ahead waits in ``send``: decoded frames waiting for the encoder stay bounded.
    """

    def __init__(self, workers: int, args: tuple):
        # forkserver (Linux): workers fork from a small server process, not from this one with its model and
        # threads; spawn elsewhere (macOS, Windows).
        self.ctx = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            self.ctx.set_forkserver_preload([__name__])  # torch, PyAV imported once in the server, not per worker
        self.args = args
        self.procs: dict = {}  # worker id -> (process, task sender, result receiver)
        self.holding: dict = {}  # worker id -> video index it decodes
        for wid in range(workers):
            self.start(wid)

    def start(self, wid: int) -> None:
        task_recv, task_send = self.ctx.Pipe(duplex=False)
        result_recv, result_send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_decode_process, args=(task_recv, result_send, *self.args), daemon=True,
                                name=f"stale-decode-{wid}")
        proc.start()
        task_recv.close()  # the child's ends: closed here, so the child's death reads as EOF
        result_send.close()
        self.procs[wid] = (proc, task_send, result_recv)
        self.holding.pop(wid, None)

    def idle(self) -> list:
        return [wid for wid in self.procs if wid not in self.holding]

    def give(self, wid: int, i: int, path: Path) -> None:
        self.holding[wid] = i
        self.procs[wid][1].send((i, str(path)))

    def receive(self, timeout: float) -> Iterator[tuple]:
        """(worker id, message or None if the process died) for each pipe with something to read."""
        readers = {proc_pipes[2]: wid for wid, proc_pipes in self.procs.items()}
        for conn in multiprocessing.connection.wait(list(readers), timeout=timeout):
            wid = readers[conn]
            try:
                yield wid, conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):  # died, maybe mid-message
                yield wid, None

    def replace(self, wid: int) -> tuple:
        """Restart a dead process: (the video index it held or None, its exit code)."""
        proc, task_send, result_recv = self.procs[wid]
        proc.join(timeout=5.0)
        held = self.holding.get(wid)
        task_send.close()
        result_recv.close()
        self.start(wid)
        return held, proc.exitcode

    def close(self) -> None:
        for proc, task_send, _ in self.procs.values():
            try:
                task_send.send(None)
            except OSError:
                pass
        for proc, task_send, result_recv in self.procs.values():
            result_recv.close()  # a process blocked in send gets a broken pipe and ends
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            task_send.close()


def _iter_features_processes(
    paths, clip, fps, batch_size, decoder, on_frames, workers, claim
) -> Iterator[VideoResult]:
    """iter_features with ``workers`` decoding processes (see the module docstring).

    Order: each idle process gets the next video in input order, at most ``AHEAD_PER_WORKER * workers`` past the
    oldest one not yet given back; finished ones wait until all before them are out. ``claim(i)`` is called just
    before video ``i`` is handed out (False: ``claimed=False``, not decoded). A decoder error fails that
    video only; a process that dies (a crash inside a decoder library) fails the video it had, and a new process
    takes its place.
    """
    paths = [Path(p) for p in paths]
    transform = functools.partial(resize_and_crop, size=clip.image_size, resize_mode=clip.resize_mode)
    pool = _Decoders(workers, (fps, transform, batch_size, decoder))
    rows: dict = {}  # video index -> encoded chunks so far
    failed: dict = {}  # video index -> OutOfMemory of a video whose frames did not fit
    finished: dict = {}  # video index -> VideoResult waiting for its turn
    sent, next_out, ahead = 0, 0, AHEAD_PER_WORKER * workers
    try:
        while True:
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1
            if next_out >= len(paths):
                return
            for wid in pool.idle():
                while sent < len(paths) and sent < next_out + ahead:
                    i, sent = sent, sent + 1
                    claimed, error = _claim(claim, i)
                    if not claimed:
                        finished[i] = VideoResult(i, paths[i], claimed=error is not None, error=error)
                        continue
                    rows[i] = []
                    pool.give(wid, i, paths[i])
                    break
            for wid, msg in pool.receive(WORKER_POLL_S):
                if msg is None:
                    i, code = pool.replace(wid)
                    if i is not None:
                        rows.pop(i, None)
                        finished[i] = VideoResult(i, paths[i], error=DecodeError(
                            f"{paths[i]}: the decoding process died (exit code {code}) on this file"))
                    continue
                kind, i, payload = msg
                if kind == "chunk":
                    if i in failed:  # the rest of a video that ran out of memory
                        continue
                    frames = torch.from_numpy(payload)
                    try:
                        rows[i].append(_encode(clip, frames, batch_size, paths[i]))  # (n, D)
                    except OutOfMemory as e:
                        failed[i] = e
                    if on_frames:
                        on_frames(frames.shape[0])
                    continue
                del pool.holding[wid]
                chunks = rows.pop(i)
                if kind == "error" or i in failed:
                    finished[i] = VideoResult(i, paths[i], error=failed.pop(i, payload))
                else:
                    finished[i] = _result(i, paths[i], chunks, payload, fps, clip)
    finally:
        pool.close()


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


def video_ids(paths: Sequence[Path]) -> list[str]:
    """Output name of each input: its stem, or, where several inputs share a stem, ``stem-<8 hex>`` from a hash of
    the absolute path, so that no two inputs of a batch write the same file."""
    stems = [input_id(p) for p in paths]
    counts: dict = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else hashed_id(p) for s, p in zip(stems, paths)]


def input_id(path: Path) -> str:
    """An input's name in outputs: its stem, with bytes that are not UTF-8 written as ``\\xNN``."""
    return unicode_name(Path(path).stem)


def hashed_id(path: Path) -> str:
    """``stem-<8 hex>``: the name of an input whose stem another input (of this run or an earlier one) has."""
    return f"{input_id(path)}-{zlib.crc32(os.fsencode(Path(path).resolve())):08x}"


def _finished(npy: Path, path: Path, fps: float, clip) -> tuple[str, str]:
    """Whether ``npy`` + sidecar hold this video's features with these settings: ``(state, why)`` with state
    "done", "absent" (or unreadable), "damaged" (a sidecar with impossible values: redone), "other-source" (another
    video of that name), "changed" (this video, since modified) or "other-settings"."""
    meta_path = npy.with_suffix(".json")
    if not (npy.is_file() and meta_path.is_file()):
        return "absent", ""
    obj = read_json_or_none(meta_path)
    if not isinstance(obj, dict):
        return "absent", ""  # an unreadable sidecar is redone
    try:
        meta = FeatureMeta.from_json(obj, str(meta_path))
    except StaleError as e:
        return "damaged", str(e)
    if str(meta.source or "") != str(path.resolve()):
        return "other-source", f"made from {meta.source!r}"
    changed = source_mismatch(meta, path)
    if changed is not None:
        return "changed", changed
    from stale_cli.clip_backbone import recorded_activation

    made = {"fps": meta.fps, "clip_model": meta.clip_model, "clip_weights": meta.clip_weights,
            "clip_activation": recorded_activation(meta.clip_model, meta.clip_activation)}
    wanted = {"fps": fps, "clip_model": clip.name, "clip_weights": clip.weights, "clip_activation": clip.activation}
    diff = [f"{k} {made[k]!r} (asked: {v!r})" for k, v in wanted.items() if made[k] != v]
    asked = WeightsId(clip.weights, clip.weights_sha256)
    if not diff and meta.weights_id.same_as(asked) is False:  # the weights file changed in place
        diff.append(f"clip_weights {meta.weights_id} (asked: {asked})")
    return ("other-settings", "; ".join(diff)) if diff else ("done", "")


def plan_features(path: Path, vid: str, out_dir: Path, fps: float, clip, overwrite: bool, warn) -> tuple[str, str, str]:
    """``(id, state, why)`` of one video's feature files in ``out_dir`` (see :func:`_finished`): the one rule of
    both ``extract-features --output`` and ``detect --cache-features``.

    A name taken by another video's features (from an earlier run) moves this one to ``stem-<8 hex>``, as a name
    clash within a run does, with a ``warn`` line. "damaged" and "changed" files are this video's to redo (state
    "absent", with a ``warn`` line); "other-settings" files are never replaced unless ``overwrite``.
    """
    state, why = _finished(out_dir / f"{vid}.npy", path, fps, clip)
    if state == "other-source" and vid == input_id(path):
        warn(f"{path}: {vid}.npy in {out_dir} holds another video's features ({why}); writing this one as "
             f"{hashed_id(path)}.npy")
        vid = hashed_id(path)
        state, why = _finished(out_dir / f"{vid}.npy", path, fps, clip)
    if overwrite and state != "absent":
        return vid, "absent", ""
    if state in ("changed", "damaged"):
        warn(f"{path}: {out_dir / vid}.npy: {why}; extracting again")
        return vid, "absent", ""
    return vid, state, why


def cache_entry(cache_dir: Path, path: Path, vid: str, fps: float, clip, warn) -> tuple[Optional[Path], str]:
    """Where ``detect --cache-features`` keeps this video's features, by :func:`plan_features`:
    ``(npy path, "done" | "absent")``, or ``(None, state)`` when the name holds features this run must not
    replace (other settings; another video's under both names): the video is then not cached, with a ``warn``."""
    vid, state, why = plan_features(path, vid, cache_dir, fps, clip, False, warn)
    npy = cache_dir / f"{vid}.npy"
    if state in ("done", "absent"):
        return npy, state
    warn(f"{path}: {npy} holds features made otherwise ({why}); they are kept and this video's features are not "
         "cached: give another --cache-features to cache both")
    return None, state


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)  # [(path, message)]
    busy: list = field(default_factory=list)  # [(path, holder)]: another run was making them
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
    workers: int = 1,
    guard=None,
) -> ExtractSummary:
    """Write ``<id>.npy`` + ``<id>.json`` into ``out_dir`` for every video; go on past bad files.

    ``guard``: a :class:`stale_cli.guard.OutputGuard` holding the run's inputs; every file to be written is
    declared to it before any video is decoded, so a clash with an input ends the run before any work.

    ``ids``: output names (default :func:`video_ids` of ``paths``; pass those of the whole batch when ``paths``
    is a shard of it, so names do not depend on the shard). A video whose files exist, made from the same source
    file (resolved path, size, mtime) with the same settings, is skipped unless ``overwrite``; files with other
    settings are a failure (never silently replaced); a name taken by another video's files gets ``stem-<hex>``.

    Each video is made under a lock (``.<id>.npy.lock``, :mod:`stale_cli.locks`): runs started at the same time
    on the same ``out_dir`` split the videos between them; one another run is making goes to ``summary.busy``.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_writable(out_dir, f"--output {out_dir}")
    paths = [Path(p) for p in paths]
    ids = list(ids) if ids is not None else video_ids(paths)
    assert len(ids) == len(paths)
    summary = ExtractSummary()
    todo, todo_ids = [], []
    for path, vid in zip(paths, ids):
        if vid != input_id(path):
            on_warning(f"{path}: another input has the same name; writing it as {vid}.npy")
        vid, state, why = plan_features(path, vid, out_dir, fps, clip, overwrite, on_warning)
        if guard is not None and state == "absent":
            guard.output(out_dir / f"{vid}.npy", "--output", f"the features of {path}", features=True)
            guard.output(out_dir / f"{vid}.json", "--output", f"the sidecar of {path}", features=True)
        if state == "done":
            summary.skipped += 1
        elif state == "absent":
            todo.append(path)
            todo_ids.append(vid)
        else:
            message = f"{out_dir / vid}.npy exists with other settings: {why}; pass --overwrite or another --output"
            summary.failed.append((path, message))
            on_error(f"{path}: {message}")
    locks: dict[int, OutputLock] = {}

    def claim(i: int) -> bool:
        """Take video i's lock; False if another run holds it or finished it meanwhile (called from the decode
        thread, or from this one with decoding processes)."""
        lock = OutputLock(out_dir / f"{todo_ids[i]}.npy")
        if lock.acquire() is None:
            summary.busy.append((todo[i], lock.holder))
            return False
        if not overwrite and _finished(out_dir / f"{todo_ids[i]}.npy", todo[i], fps, clip)[0] == "done":
            lock.release()
            summary.skipped += 1
            return False
        locks[i] = lock
        return True

    total = 0
    for p in todo:
        _, end = probe_header(p)
        total += num_samples(end, fps) if end else 0
    bar = tqdm(total=total or None, unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    report = tqdm.external_write_mode if progress else contextlib.nullcontext
    try:
        for result in iter_features(todo, clip, fps, batch_size, decoder, on_frames=bar.update, claim=claim,
                                    workers=workers):
            path = result.path
            if not result.claimed:
                continue
            lock = locks.pop(result.index, None)  # None: taking the lock failed (the error is in the result)
            try:
                _store(result, out_dir / f"{todo_ids[result.index]}.npy", summary, report, on_warning, on_error)
            finally:
                if lock is not None:
                    lock.release()
    finally:
        bar.close()
        for lock in locks.values():  # taken by the decode thread for videos not finished (an interrupt)
            lock.release()
        summary.seconds = time.perf_counter() - start
    return summary


def _store(result: VideoResult, npy: Path, summary: ExtractSummary, report, on_warning, on_error) -> None:
    """Write one video's features (or record its failure) into ``summary``."""
    path = result.path
    if result.error is not None:
        summary.failed.append((path, str(result.error)))
        with report():
            on_error(str(result.error))
        return
    with report():
        for w in result.warnings:
            on_warning(f"{path}: {w}")
    try:
        write_features(npy, result.features, result.meta)
    except StaleError as e:
        summary.failed.append((path, str(e)))
        with report():
            on_error(f"{path}: {e}")
        return
    summary.done += 1
    summary.frames += result.features.shape[0]
