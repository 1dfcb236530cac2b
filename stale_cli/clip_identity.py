"""Which CLIP weights made a feature file or initialised a checkpoint's text tower, and whether two are the same.

Features only mean something to the text tower of the CLIP that made them: image and text embeddings of two
different sets of weights (OpenAI's and a LAION tag, or two weights files) live in unrelated spaces. A weights
file is identified by its content (sha256), so a copy elsewhere is the same weights and a file replaced in place
is not; a pretrained tag by its name (open_clip downloads the same file for it everywhere).

The hash of a file is computed once per (path, size, mtime): kept in memory for the process and in
``weights-sha256.json`` of the stale cache directory (:func:`stale_cli.textcache.cache_dir`) across runs.
A cache that cannot be read or written is ignored: it only saves time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CACHE_NAME = "weights-sha256.json"
RANDOM = "random"  # what load_clip records for weights=None
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")  # a label ending so names a file, not a tag
_memory: dict[str, str] = {}


def _file_of(label: Optional[str]) -> Optional[Path]:
    """The weights file a recorded label names, or None for a pretrained tag, "random" or nothing. load_clip
    records a file by its resolved path; a hand-made sidecar may give a relative one (a tag has no "/")."""
    if not label or label == RANDOM:
        return None
    path = Path(label)
    if "/" in label or os.sep in label or path.suffix.lower() in WEIGHTS_SUFFIXES or path.is_file():
        return path
    return None


def weights_sha256(label: Optional[str]) -> Optional[str]:
    """sha256 (hex) of the weights file ``label`` names; None for a pretrained tag, "random", or a file that
    cannot be read."""
    path = _file_of(label)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    if key in _memory:
        return _memory[key]
    from stale_cli.textcache import cache_dir

    store = cache_dir() / CACHE_NAME
    from stale_cli.fileio import read_json_or_none

    known = read_json_or_none(store)
    known = known if isinstance(known, dict) else {}
    digest = known.get(key)
    if not isinstance(digest, str):
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        except OSError:
            return None
        digest = h.hexdigest()
        from stale_cli.errors import StaleError
        from stale_cli.fileio import write_json_atomic

        try:
            write_json_atomic(store, {**known, key: digest})
        except (OSError, StaleError) as e:  # an unwritable cache only costs a rehash next run
            log.debug("weights hash cache %s not written (%s)", store, e)
    _memory[key] = digest
    return digest


@dataclass(frozen=True)
class WeightsId:
    """What a sidecar or checkpoint records of the CLIP weights: ``label`` (a pretrained tag, "random", or the
    resolved path of a weights file; None: not recorded) and, for a file, ``sha256`` of its content."""

    label: Optional[str]
    sha256: Optional[str] = None

    @property
    def known(self) -> bool:
        """Whether the weights are identified: a tag, or a file with its hash (files of older versions have none).
        "random" (tests, benchmarks) is not: no two random initialisations are the same weights."""
        if self.label is None or self.label == RANDOM:
            return False
        return self.sha256 is not None or _file_of(self.label) is None

    def same_as(self, other: "WeightsId") -> Optional[bool]:
        """Whether both name the same weights; None when either is not identified."""
        if not (self.known and other.known):
            return None
        if self.sha256 is not None and other.sha256 is not None:
            return self.sha256 == other.sha256
        return self.label == other.label

    def __str__(self) -> str:
        return f"{self.label} (sha256 {self.sha256[:12]})" if self.sha256 else str(self.label)


def mismatch_hint(made: WeightsId, loaded: WeightsId) -> str:
    """What to do when features were made with ``made`` but ``loaded`` is what they would be compared with."""
    if made.label == loaded.label:  # the same file, changed since
        return f"the weights file {made.label} changed since; extract the features again (--overwrite)"
    return f"pass --clip-weights {made.label}"
