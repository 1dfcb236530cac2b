"""The one rule for every file a command writes: it is never something the run reads.

Each command builds an :class:`OutputGuard` before it writes anything, declares to it what it reads (the inputs and
their companions: the ``.json`` sidecar beside a feature file, the classes file, ``@list`` files, checkpoints,
annotations, CLIP weights, the videos) and then every path it will write, under the option that names it
(``--output``, ``--html``, ``--plot``, ...). A path that is one of the inputs, that another option
also writes (``-o out.json --html out.json``), or that holds features (an existing ``.json`` sidecar beside its
``.npy``, or a ``.json`` that reads as a sidecar) is refused with one InputError line naming both and what to do.

Paths are compared resolved (``./x``, ``a/../x`` and symbolic links are the same file) and, where both exist, by
device and inode (a hard link is the same file too). Feature files themselves are written only by
``extract-features`` and ``--cache-features``, which follow their own rule
(:func:`stale_cli.features.extract.plan_features`): never replace another video's features or features made with other
settings.

What happens at the path itself when it is written (symbolic links followed, FIFOs and devices written into, never
replaced) is :func:`stale_cli.fileio.atomic_path`'s part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from stale_cli.errors import InputError
from stale_cli.fileio import read_json_or_none

# A .json bigger than this is not read to decide whether it is a feature sidecar (a sidecar of a 100-hour video at
# 4 fps is about 20 MB; its .npy beside it decides anyway).
MAX_SIDECAR_SNIFF = 64 << 20


def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inode(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def feature_role(path: str | os.PathLike) -> Optional[str]:
    """What ``path`` is when it holds features, else None: an existing ``.npy`` with its ``.json`` beside it, or an
    existing ``.json`` whose ``.npy`` is beside it or that reads as a sidecar (a JSON object with ``fps``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npy") or not path.is_file():
        return None
    if suffix == ".npy":
        return f"a feature file (its sidecar {path.with_suffix('.json').name} is beside it)" \
            if path.with_suffix(".json").is_file() else None
    if path.with_suffix(".npy").is_file():
        return f"the sidecar of the feature file {path.with_suffix('.npy').name}"
    obj = read_json_or_none(path, max_bytes=MAX_SIDECAR_SNIFF)
    return "a feature sidecar" if isinstance(obj, dict) and "fps" in obj else None


class OutputGuard:
    """What one run reads and what it writes; :meth:`output` refuses a write that would destroy something.

    Declare the inputs first (:meth:`input`, :meth:`inputs`), then each output path with the option that writes it.
    """

    def __init__(self) -> None:
        self._read: dict[str, str] = {}  # resolved path -> what it is ("the classes file x.txt")
        self._read_inodes: dict[tuple[int, int], str] = {}
        self._written: dict[str, tuple[str, str]] = {}  # resolved path -> (option, what)
        self._written_inodes: dict[tuple[int, int], tuple[str, str]] = {}

    # ---- what the run reads --------------------------------------------------------------------------------
    def input(self, path: Optional[str | os.PathLike], what: str) -> None:
        """Declare a file the run reads (None: an option not given). ``what`` names it in messages."""
        if path is None or str(path) in ("", "-"):
            return
        self._read.setdefault(_key(path), what)
        inode = _inode(path)
        if inode is not None:
            self._read_inodes.setdefault(inode, what)

    def inputs(self, paths: Iterable[str | os.PathLike]) -> None:
        """Declare input files with their companions: a feature file's sidecar, a sidecar's feature file."""
        for path in paths:
            path = Path(path)
            self.input(path, f"the input {path}")
            if path.suffix.lower() == ".npy":
                self.input(path.with_suffix(".json"), f"the sidecar of the input {path.name}")
            elif path.suffix.lower() == ".json" and path.with_suffix(".npy").is_file():
                self.input(path.with_suffix(".npy"), f"the feature file of the input {path.name}")

    def input_if_file(self, value: Optional[str | os.PathLike], what: str) -> None:
        """Declare an option's value when it names an existing file (``--clip-weights`` is a file or a tag)."""
        if value is not None and str(value) and os.path.isfile(value):
            self.input(value, what)

    # ---- what it writes -------------------------------------------------------------------------------------
    def output(self, path: str | os.PathLike, option: str, what: str = "", features: bool = False) -> None:
        """Declare a path the run writes under ``option``; raise InputError when it is an input, another option's
        output, or (unless ``features``: the writer follows the feature files' own rule) holds features.

        ``what`` describes the output (for another option's message: "a cached feature file of x.mp4")."""
        key = _key(path)
        if self._written.get(key, ("",))[0] == option:  # declared already (the one --output file of a batch)
            return
        inode = _inode(path)
        hit = self._read.get(key) or (self._read_inodes.get(inode) if inode is not None else None)
        if hit is not None:
            raise InputError(f"{option} {path} is {hit}: writing it would destroy it; choose another output path")
        mine = (option, what)
        other = self._written.get(key) or (self._written_inodes.get(inode) if inode is not None else None)
        if other is not None and other[0] != option:
            theirs = other[1] or f"written by {other[0]} too"
            raise InputError(f"{option} {path} is {theirs} ({other[0]}): one would overwrite the other; give "
                             f"{option} another path")
        if not features:
            role = feature_role(path)
            if role is not None:
                raise InputError(f"{option} {path} is {role}: writing it would make those features unreadable; "
                                 "choose another output path (or --format csv)")
        self._written.setdefault(key, mine)
        if inode is not None:
            self._written_inodes.setdefault(inode, mine)

    def outputs(self, paths: dict) -> None:
        """:meth:`output` for each ``path -> option``."""
        for path, option in paths.items():
            self.output(path, option)
