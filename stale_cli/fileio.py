"""Atomic file writes and the feature-file contract (DESIGN.md §3).

Every output of the tool is written to a temporary file in the target directory, flushed to disk and renamed into
place, so an interrupted run (or a crash of the machine) never leaves a half-written file that a rerun would mistake
for a finished one. The file gets the mode a plain ``open()`` would give it (the existing file's, else 0666 less
the umask), and temporary files left by a killed run are removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from stale_cli.errors import DataError, InputError

FEATURE_SIDECAR_KEYS = ("fps", "timestamps", "duration", "source", "clip_model", "clip_weights", "num_frames")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a pid of another user's process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _tmp_prefix(path: Path) -> str:
    """``.<name>.<pid>@<host>.``: whose temporary file it is, so a later run knows whether its writer is gone."""
    return f".{path.name}.{os.getpid()}@{socket.gethostname().replace('.', '_')}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path`` left by processes of this machine that no longer run."""
    mine = re.compile(rf"\.{re.escape(path.name)}\.(\d+)@([^.]+)\.[A-Za-z0-9_]+\.tmp")
    host = socket.gethostname().replace(".", "_")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = mine.fullmatch(name)
        if m and m.group(2) == host and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it onto ``path``, on failure
    remove it. The result has the mode ``open(path, "w")`` would give: the old file's, else 0666 less the umask."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write to {path.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(directory: Path, label: str) -> None:
    """Raise InputError unless files can be created in ``directory`` (made if missing): checked before any work."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".stale-write-test."):
            pass
    except OSError as e:
        raise InputError(f"{label}: cannot write there ({e.strerror or e})") from e


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
    described = {"num_rows": feats.shape[0], "embed_dim": feats.shape[1]}
    wrong = [f"{k} {meta[k]!r}" for k, v in described.items() if k in meta and meta[k] != v]
    if isinstance(meta.get("timestamps"), list) and len(meta["timestamps"]) != feats.shape[0]:
        wrong.append(f"{len(meta['timestamps'])} timestamps")
    if wrong:
        raise DataError(
            f"{sidecar}: the sidecar does not describe {npy_path.name} (array {feats.shape[0]} x {feats.shape[1]}; "
            f"sidecar: {', '.join(wrong)}); the pair comes from different runs: extract this video again"
        )
    return feats.astype(np.float32), meta


def source_identity(path: str | os.PathLike) -> dict:
    """What identifies a source video across runs: its resolved path, size (bytes) and mtime (ns)."""
    path = Path(path)
    st = path.stat()
    return {"source": str(path.resolve()), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def source_mismatch(meta: dict, path: str | os.PathLike) -> Optional[str]:
    """None if the sidecar ``meta`` was made from the file at ``path`` as it is now; else what differs.

    Sidecars of older versions record only the path: for them the resolved path alone decides.
    """
    try:
        now = source_identity(path)
    except OSError as e:
        return f"source unreadable ({e.strerror or e})"
    if str(meta.get("source", "")) != now["source"]:
        return f"made from {meta.get('source')!r}"
    changed = [k.removeprefix("source_") for k in ("source_size", "source_mtime_ns") if k in meta and meta[k] != now[k]]
    return f"{' and '.join(changed)} of the source changed since" if changed else None
