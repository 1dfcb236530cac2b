"""Per-output lock files, so that concurrent runs into one output split the work instead of clashing.

A run that is about to make an output ``X`` takes ``.X.lock`` beside it: a file holding the owner's pid and host,
held with an exclusive ``flock`` for as long as the run works on ``X``. Another run that finds the lock held leaves
``X`` to its owner and moves on; a lock file nobody holds (its owner was killed, or the machine rebooted) is stale
and is taken over, with a log line naming the dead owner. The kernel releases a ``flock`` when its process dies,
so stale locks are detected without trusting pids; the pid in the file is for people and messages. Where ``flock``
is missing (Windows) the file is created exclusively and a lock whose pid no longer runs counts as stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from stale_cli.fileio import pid_alive, write_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _owner(text: str) -> tuple[int, str]:
    pid, _, host = text.strip().partition(" ")
    return (int(pid) if pid.isdigit() else 0), host


class OutputLock:
    """An exclusive lock on one output; :meth:`acquire` returns None while another live run holds it."""

    def __init__(self, output: str | os.PathLike):
        self.path = lock_path(output)
        self.fd: Optional[int] = None
        self.holder = ""  # "pid N on HOST" of the run holding the lock when acquire() failed

    def acquire(self) -> Optional["OutputLock"]:
        """This lock, taken; None while another live run holds it. A lock file that cannot be written (a full
        disk) raises InputError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._create_exclusive() if fcntl is None else self._flock()
        except OSError as e:
            raise write_error(self.path, e) from e
        if fd is None:
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode("utf-8"), 0)
        except OSError as e:
            self.fd = fd
            self.release()
            raise write_error(self.path, e) from e
        self.fd = fd
        return self

    def _flock(self) -> Optional[int]:
        for _ in range(8):  # the file may be unlinked by its releasing owner between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.holder = self._describe(os.pread(fd, 200, 0).decode("utf-8", "replace"))
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                previous = os.pread(fd, 200, 0).decode("utf-8", "replace")
                if previous.strip():
                    log.info("%s: taking over a stale lock (%s is gone)", self.path, self._describe(previous))
                return fd
            os.close(fd)
        return None

    def _create_exclusive(self) -> Optional[int]:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                text = self.path.read_text(encoding="utf-8", errors="replace")
                pid, host = _owner(text)
                if host == socket.gethostname() and not pid_alive(pid):
                    log.info("%s: taking over a stale lock (%s is gone)", self.path, self._describe(text))
                    self.path.unlink(missing_ok=True)
                    continue
                self.holder = self._describe(text)
                return None
        return None

    @staticmethod
    def _describe(text: str) -> str:
        pid, host = _owner(text)
        return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before closing: a waiting run then finds a new file, not this one
        os.close(self.fd)
        self.fd = None

