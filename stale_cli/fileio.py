"""Atomic file writes and the feature-file contract (DESIGN.md §3).

Every output of the tool is written to a temporary file in the target directory, flushed to disk and renamed into
place, so an interrupted run (or a crash of the machine) never leaves a half-written file that a rerun would mistake
for a finished one. The file gets the mode a plain ``open()`` would give it (the existing file's, else 0666 less
the umask), and temporary files left by a killed run are removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from stale_cli.errors import DataError, InputError

FEATURE_SIDECAR_KEYS = ("fps", "timestamps", "duration", "source", "clip_model", "clip_weights", "num_frames")
# Sane bounds of what a feature file describes: beyond them a sidecar is corrupt, not a real video.
MIN_FEATURE_FPS, MAX_FEATURE_FPS = 1e-3, 1000.0  # rows per second
MAX_DURATION = 1e7  # seconds (about 116 days)
MAX_FEATURE_BYTES = 1 << 36  # 64 GiB: a header claiming more is refused before anything is read


def write_error(path: str | os.PathLike, e: OSError) -> InputError:
    """The one-line error of a failed write (disk full, quota, read-only file system, ...)."""
    hint = "; free some space and rerun" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return InputError(f"cannot write {path}: {e.strerror or e}{hint}")


def parse_json(text: str, where: str):
    """``json.loads`` whose failures (bad syntax, nesting too deep for the parser) are one DataError line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None


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


def write_target(path: str | os.PathLike) -> tuple[Path, str]:
    """Where a write of ``path`` lands, and how: ``(file, "replace")`` for a regular file or a path with nothing
    there yet, ``(node, "stream")`` for a FIFO or a character device (``/dev/null``, a terminal), which are
    written into and never replaced by a file.

    A symbolic link is followed to what it names, so the link stays and its target gets the new content. A block
    device, a socket or a directory is refused with an InputError: nothing sensible can replace it.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, "replace"
    except OSError as e:  # a link loop, a component that is a file
        raise InputError(f"cannot write {path}: {e.strerror or e}") from e
    if stat.S_ISREG(st.st_mode):
        return target, "replace"
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return target, "stream"
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise InputError(f"cannot write {path}: it is {kind}, which a file must not replace; give a file path")


def is_stream(path: str | os.PathLike) -> bool:
    """Whether writes of ``path`` go into a FIFO or character device (see :func:`write_target`)."""
    try:
        return write_target(path)[1] == "stream"
    except InputError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it onto ``path``, on failure
    remove it. The result has the mode ``open(path, "w")`` would give: the old file's, else 0666 less the umask.

    What is at ``path`` decides where the content goes (:func:`write_target`): a symbolic link's target is replaced
    (the link stays); a FIFO or character device gets the content written into it once it is complete (the
    temporary file then lives in the system's temporary directory); a block device or socket is refused.
    An OSError while writing (a full disk, ``/dev/full``) becomes one InputError line; ``path`` is then left as it
    was (a FIFO or device may have received part of it).
    """
    path = Path(path)
    target, how = write_target(path)
    if how == "stream":
        yield from _streamed(path, target)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise InputError(f"cannot write to {target.parent}: {e.strerror or e}") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _streamed(path: Path, node: Path) -> Iterator[Path]:
    """The body of :func:`atomic_path` for a FIFO or character device: the caller writes a temporary file, whose
    content is then written into ``node`` (opened without creating or truncating anything; a FIFO waits for its
    reader, as ``cat > fifo`` does)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stale-stream.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write {path}: no temporary file ({e.strerror or e})") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as src:
            out = os.open(node, os.O_WRONLY)
            try:
                while chunk := src.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
            finally:
                os.close(out)
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(directory: Path, label: str) -> None:
    """Raise InputError unless files can be created in ``directory``: checked before any work. A missing directory
    is not made here (a run that then fails on its inputs leaves nothing behind): its nearest existing ancestor
    must be a directory that takes new files, and the writes make it."""
    directory = Path(os.path.abspath(directory))
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".stale-write-test."):
            pass
    except OSError as e:
        raise InputError(f"{label}: cannot write there ({e.strerror or e})") from e


def missing_dirs(path: str | os.PathLike) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, outermost first."""
    path = Path(os.path.abspath(path))
    return [p for p in (*reversed(path.parents), path) if not p.exists()]


def remove_empty_dirs(dirs: list) -> None:
    """Remove those of ``dirs`` (from :func:`missing_dirs`) that are empty, innermost first: the folders a run
    made for outputs it never wrote (every input failed)."""
    for folder in reversed(dirs):
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_file_writable(path: Path, label: str) -> None:
    """Raise InputError unless the file ``path`` can be written (checked before any work): a FIFO or device must
    be writable itself, a file's directory (made if missing) must take new files."""
    target, how = write_target(path)
    if how == "stream":
        if not os.access(target, os.W_OK):
            raise InputError(f"{label}: cannot write there (permission denied)")
        return
    check_writable(target.parent, label)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8; bytes of file names that are not UTF-8 in it are written as ``\\xNN``."""
    from stale_cli.text import unicode_name

    with atomic_path(path) as tmp:
        tmp.write_text(unicode_name(text), encoding="utf-8")


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
    try:
        write_json_atomic(npy_path.with_suffix(".json"), meta)
    except BaseException:
        npy_path.unlink(missing_ok=True)  # nothing partial: an array without its sidecar would fail every reader
        raise


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
        meta = parse_json(sidecar.read_text(encoding="utf-8-sig"), str(sidecar))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{sidecar}: unreadable sidecar ({e})") from e
    if not isinstance(meta, dict) or "fps" not in meta:
        raise DataError(f"{sidecar}: sidecar must be a JSON object with at least 'fps'")
    shape = _npy_shape(npy_path)
    try:
        feats = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy_path}: corrupt feature file ({e})") from e
    assert feats.shape == shape, (feats.shape, shape)
    with np.errstate(over="ignore"):
        feats = feats.astype(np.float32)  # float64 values beyond float32's range become inf: caught below
    if not np.isfinite(feats).all():
        raise DataError(f"{npy_path}: feature file contains NaN or infinite values (as float32)")
    check_sidecar(meta, str(sidecar))
    described = {"num_rows": feats.shape[0], "embed_dim": feats.shape[1]}
    wrong = [f"{k} {meta[k]!r}" for k, v in described.items() if k in meta and meta[k] != v]
    if isinstance(meta.get("timestamps"), list) and len(meta["timestamps"]) != feats.shape[0]:
        wrong.append(f"{len(meta['timestamps'])} timestamps")
    if wrong:
        raise DataError(
            f"{sidecar}: the sidecar does not describe {npy_path.name} (array {feats.shape[0]} x {feats.shape[1]}; "
            f"sidecar: {', '.join(wrong)}); the pair comes from different runs: extract this video again"
        )
    return feats, meta


def _npy_shape(npy_path: Path) -> tuple:
    """Shape of a ``.npy`` array from its header alone, checked against the file's size before anything is read.

    A (T, D) float array with T, D >= 1 is required; a header claiming more data than the file holds (or more
    than :data:`MAX_FEATURE_BYTES`) is refused without allocating it.
    """
    try:
        with open(npy_path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            offset = f.tell()
        size = os.path.getsize(npy_path)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy_path}: corrupt feature file ({e})") from e
    if dtype.kind != "f":
        raise DataError(f"{npy_path}: expected floating-point features, got dtype {dtype}")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise DataError(f"{npy_path}: expected a (T, D) array with T, D >= 1, got shape {tuple(shape)}")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > MAX_FEATURE_BYTES or claimed != size - offset:
        raise DataError(
            f"{npy_path}: header claims a {shape[0]} x {shape[1]} {dtype} array ({claimed:,} bytes) but the file "
            f"holds {size - offset:,}; the file is corrupt or truncated, extract it again"
        )
    return tuple(shape)


# Sidecar timestamps may run this share (plus 1 s) past the recorded duration (rounding, a last frame's display
# time); further, they describe another video or another rate.
TIMESTAMP_SLACK = 1.05


def _finite(x, lo: float, hi: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi


def check_sidecar(meta: dict, where: str) -> None:
    """Raise DataError unless the sidecar's fields have sane types and values (whether they describe the array is
    checked by :func:`read_features`).

    Only ``fps`` is required (hand-made sidecars); every other field of DESIGN.md §3 is checked when present.
    """
    problems = []
    if not _finite(meta.get("fps"), MIN_FEATURE_FPS, MAX_FEATURE_FPS):
        problems.append(
            f"'fps' must be a number in [{MIN_FEATURE_FPS:g}, {MAX_FEATURE_FPS:g}], got {meta.get('fps')!r}"
        )
    if meta.get("duration") is not None and not _finite(meta["duration"], 0.0, MAX_DURATION):
        problems.append(f"'duration' must be seconds in [0, {MAX_DURATION:g}], got {meta['duration']!r}")
    stamps = meta.get("timestamps")
    if stamps is not None:
        if not isinstance(stamps, list) or not all(_finite(t, -MAX_DURATION, MAX_DURATION) for t in stamps):
            problems.append("'timestamps' must be a list of finite seconds")
        elif any(b < a for a, b in zip(stamps, stamps[1:])):
            k = next(k for k in range(1, len(stamps)) if stamps[k] < stamps[k - 1])
            problems.append(f"'timestamps' must not decrease (row {k} at {stamps[k]} s follows {stamps[k - 1]} s)")
        elif stamps and _finite(meta.get("duration"), 0.0, MAX_DURATION) and \
                stamps[-1] > TIMESTAMP_SLACK * meta["duration"] + 1.0:
            problems.append(f"'timestamps' run to {stamps[-1]} s, past the video's 'duration' of {meta['duration']} s")
    for key in ("num_rows", "num_frames", "embed_dim"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            problems.append(f"{key!r} must be a non-negative integer, got {value!r}")
    for key in ("clip_model", "clip_weights", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(f"{key!r} must be a string, got {meta[key]!r}")
    if problems:
        raise DataError(f"{where}: bad sidecar: {'; '.join(problems)}")


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
