"""Feature files on disk (docs/formats.md): whether a video's files are done, the names they take, and
:func:`extract_many`, which writes them for a batch of videos."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from stale_cli.clip_identity import WeightsId
from stale_cli.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FEATURE_FPS
from stale_cli.errors import StaleError
from stale_cli.features.extract.steps import VideoResult
from stale_cli.features.extract.threads import iter_features
from stale_cli.features.video import num_samples, probe_header
from stale_cli.fileio import check_writable, read_json_or_none
from stale_cli.locks import OutputLock
from stale_cli.sidecar import FeatureMeta, source_mismatch, write_features
from stale_cli.video_ids import hashed_id, input_id, video_ids

log = logging.getLogger(__name__)

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
    from stale_cli.features.clip_backbone import recorded_activation

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
