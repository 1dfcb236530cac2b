"""A disk cache of text features, so that the 213 generic distractor names are encoded once per text tower, not per run.

Detection scores every snippet against the names asked for *and* the generic action names (``vocab.distractors``).
Encoding those through CLIP's text transformer costs seconds to minutes on a CPU, every run, for the same
answer. Rows are stored per (what encodes them, name) in ``$STALE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/stale`` or ``~/.cache/stale``), one ``.npz`` per encoder identity: a hash of everything that
decides the rows (CLIP model, weights identity, activation, templates; a checkpoint's own identity for its
learned prompt). A cache that cannot be read or written is ignored with a debug line: it only saves time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    env = os.environ.get("STALE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stale"


def cached_rows(identity: dict, names: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Rows ``(len(names), C)`` for ``names``: those in the cache of ``identity`` read back, the rest encoded with
    ``encode(list[str]) -> (n, C)`` and added to it."""
    from stale_cli.fileio import atomic_path

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir() / f"text-{digest}.npz"
    known: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            known = dict(zip(z["names"].tolist(), z["rows"]))
    except (OSError, KeyError, ValueError) as e:
        log.debug("text cache %s not used (%s)", path, e)
    missing = [n for n in dict.fromkeys(names) if n not in known]
    if missing:
        rows = np.asarray(encode(missing), dtype=np.float32)  # (n, C)
        known.update(zip(missing, rows))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, names=np.array(list(known)), rows=np.stack(list(known.values())))
        except OSError as e:
            log.debug("text cache %s not written (%s)", path, e)
    return np.stack([known[n] for n in names]).astype(np.float32)
