"""Atomic file writes and the feature-file contract (DESIGN.md §3).

Every output of the tool is written to a temporary file in the target directory and renamed into place, so an
interrupted run never leaves a half-written file that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stale_cli.errors import DataError, InputError

FEATURE_SIDECAR_KEYS = ("fps", "timestamps", "duration", "source", "clip_model", "clip_weights", "num_frames")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write to {path.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_features(npy_path: str | os.PathLike, features: np.ndarray, meta: dict) -> None:
    """Write ``<stem>.npy`` (float16, (T, D)) and then its ``<stem>.json`` sidecar.

    The sidecar is written last: a video counts as done only when both exist.
    """
    npy_path = Path(npy_path)
    missing = [k for k in FEATURE_SIDECAR_KEYS if k not in meta]
    assert not missing, f"sidecar lacks {missing}"
    with atomic_path(npy_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(features, dtype=np.float16))
    write_json_atomic(npy_path.with_suffix(".json"), meta)


def read_features(npy_path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a feature file and its sidecar: ``(features float32 (T, D), meta dict)``."""
    npy_path = Path(npy_path)
    sidecar = npy_path.with_suffix(".json")
    if not npy_path.is_file():
        raise InputError(f"{npy_path}: no such feature file")
    if not sidecar.is_file():
        raise DataError(
            f"{npy_path}: feature file has no sidecar {sidecar.name}; "
            "features must be written by `stale extract-features` (or come with a .json giving at least fps)"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{sidecar}: unreadable sidecar ({e})") from e
    if not isinstance(meta, dict) or "fps" not in meta:
        raise DataError(f"{sidecar}: sidecar must be a JSON object with at least 'fps'")
    try:
        feats = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy_path}: corrupt feature file ({e})") from e
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise DataError(f"{npy_path}: expected a (T, D) array with T >= 1, got shape {tuple(feats.shape)}")
    if not np.isfinite(feats).all():
        raise DataError(f"{npy_path}: feature file contains NaN or infinite values")
    return feats.astype(np.float32), meta
