"""Atomic file writes and JSON reading (a feature file with its sidecar is :mod:`stale_cli.sidecar`'s).

Every output of the tool is written to a temporary file in the target directory, flushed to disk and renamed into
place, so an interrupted run (or a crash of the machine) never leaves a half-written file that a rerun would mistake
for a finished one. The file gets the mode a plain ``open()`` would give it (the existing file's, else 0666 less
the umask), and temporary files left by a killed run are removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from stale_cli.errors import DataError, InputError


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


def read_json(path: str | os.PathLike, what: str):
    """The parsed JSON of the file at ``path``, a ``what`` ("annotation file", ...) the command needs: missing is
    an InputError, unreadable or not JSON a DataError, each one line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (spreadsheets, Windows editors) is dropped
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from e
    return parse_json(text, str(path))


def read_json_or_none(path: str | os.PathLike, max_bytes: Optional[int] = None):
    """The parsed JSON of the file at ``path``, or None when it is missing, larger than ``max_bytes``, unreadable
    or not JSON: for files that are only looked at (a sidecar to compare, a record to resume), never required."""
    try:
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            return None
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


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


def source_identity(path: str | os.PathLike) -> dict:
    """What identifies a source video across runs: its resolved path, size (bytes) and mtime (ns)."""
    path = Path(path)
    st = path.stat()
    return {"source": str(path.resolve()), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}
