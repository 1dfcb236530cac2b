"""A disk that fills up, made on purpose: an OSError(ENOSPC) from the call that writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_once(monkeypatch, owner, name: str):
    """Make ``owner.name`` raise ENOSPC on its first call only (the disk fills up, then space is freed)."""
    real = getattr(owner, name)
    calls = []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            enospc()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)


def no_partial_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")
