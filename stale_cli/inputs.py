"""Which files a command works on: paths, directories and @list files, and shards of them for job arrays."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from stale_cli.errors import InputError

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv .vob .mxf".split()
)
FEATURE_EXTENSIONS = frozenset({".npy"})
_EXTENSIONS = {"video": VIDEO_EXTENSIONS, "features": FEATURE_EXTENSIONS}


def _wanted(path: Path, kinds: Sequence[str]) -> bool:
    return any(path.suffix.lower() in _EXTENSIONS[k] for k in kinds)


def walk_files(root: Path, on_broken: Callable[[Path], None]) -> Iterator[Path]:
    """Every non-hidden file below ``root``, following links to directories (each real directory once, so a link
    to an ancestor cannot loop); ``on_broken(path)`` is called for each link that points nowhere."""
    visited = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(top) / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not path.exists():
                on_broken(path)
            elif path.is_file():
                yield path


def _read_list(list_file: Path) -> list[str]:
    """Lines of an @list file: one path per line, blank lines and # comments skipped, relative to the file.

    Read as UTF-8 (a BOM, as editors on Windows write, is dropped); a line that is not UTF-8 is taken as the bytes
    of a file name (``caf\xe9.mp4`` in Latin-1), as the file system holds them, so it costs that line at most."""
    try:
        data = list_file.read_bytes()
    except OSError as e:
        raise InputError(f"@{list_file}: cannot read the list file ({e.strerror or e})") from e
    lines = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape").splitlines()
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            at = "@" if line.startswith("@") else ""
            p = Path(line[len(at):]).expanduser()
            out.append(at + str(p if p.is_absolute() else list_file.parent / p))
    return out


def collect_inputs(
    items: Iterable[str], kinds: Sequence[str] = ("video",), bad: Optional[list] = None,
    lists: Optional[list] = None,
) -> list[Path]:
    """Expand command-line inputs into a list of files, in the order given, without duplicates.

    ``items``: file paths (taken as given, whatever their extension: the decoder decides), directories (searched
    recursively for files with an extension of ``kinds``, sorted), and ``@list.txt`` (one path per line,
    relative paths relative to the list file; may name directories and other lists).
    Raises :class:`InputError` for a missing path, a directory with nothing of ``kinds`` in it, or no input.
    With ``bad`` given, a bad entry of an @list file and a broken link in a directory are appended to it as
    ``(entry, message)`` and the rest is still collected; without it they raise. With ``lists`` given, the path
    of every @list file read is appended to it (they are inputs too: no output may replace them).
    """
    unknown = [k for k in kinds if k not in _EXTENSIONS]
    assert not unknown, unknown
    found: list[Path] = []
    seen: set = set()
    reading: list = []  # the @list files being read, outermost first: one that includes itself is read once
    read: set = set()  # every @list file read: one included twice (by two lists) adds nothing the second time

    def add(p: Path) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            found.append(p)

    def visit(item: str, depth: int) -> None:
        if item.startswith("@"):
            if depth > 8:
                raise InputError(f"{item}: @list files nested too deeply")
            list_file = Path(item[1:]).expanduser()
            if not list_file.is_file():
                raise InputError(f"{item}: list file {list_file} does not exist")
            key = os.path.normcase(os.path.realpath(list_file))
            if key in reading:
                raise InputError(f"{item}: the list includes itself; each of its lines is read once")
            if key in read:
                return
            read.add(key)
            if lists is not None:
                lists.append(list_file)
            reading.append(key)
            try:
                for entry in _read_list(list_file):
                    if bad is None:
                        visit(entry, depth + 1)
                        continue
                    try:
                        visit(entry, depth + 1)
                    except InputError as e:
                        bad.append((entry, f"{item}: {e}"))
            finally:
                reading.pop()
            return
        path = Path(item).expanduser()
        if path.is_dir():
            def broken(link: Path) -> None:
                message = f"{link}: broken symbolic link (points to {os.readlink(link)}, which does not exist)"
                if bad is None:
                    raise InputError(message)
                bad.append((str(link), message))

            hits = sorted((p for p in walk_files(path, broken) if _wanted(p, kinds)), key=lambda p: p.as_posix())
            if not hits:
                what = " or ".join(kinds)
                exts = " ".join(sorted(set().union(*(_EXTENSIONS[k] for k in kinds))))
                raise InputError(f"{path}: directory contains no {what} files (looked for {exts})")
            for p in hits:
                add(p)
        elif path.is_file():
            add(path)
        elif path.is_symlink():
            raise InputError(f"{path}: broken symbolic link (points to {os.readlink(path)}, which does not exist)")
        else:
            raise InputError(f"{path}: no such file or directory")

    for item in items:
        visit(str(item), 0)
    if not found:
        raise InputError("no inputs given")
    return found


def _sidecar_source(npy: Path) -> Optional[tuple]:
    """``(resolved source video, sidecar)`` a feature file's sidecar records, or None (no, unreadable or bad
    sidecar, or one that names no source)."""
    from stale_cli.errors import DataError
    from stale_cli.fileio import read_json_or_none
    from stale_cli.sidecar import FeatureMeta

    try:
        meta = FeatureMeta.from_json(read_json_or_none(npy.with_suffix(".json"), max_bytes=64 << 20))
    except DataError:  # no sidecar, an unreadable or a bad one
        return None
    return (meta.source, meta) if meta.source is not None else None


def one_per_video(paths: Sequence[Path], note: Callable[[str], None]) -> list[Path]:
    """``paths`` with each video given twice, as itself and as its extracted features (a folder holding both, after
    ``extract-features sb --output sb``), kept once, in the place of the first of the two.

    The feature file is kept when its sidecar matches the video as it is now (same resolved path, size and mtime):
    it holds that video's features and spares decoding it. Otherwise the features are out of date and the video is
    kept. ``note(message)`` says which was dropped.
    """
    from stale_cli.sidecar import source_mismatch

    videos = {str(Path(p).resolve()): p for p in paths if Path(p).suffix.lower() not in FEATURE_EXTENSIONS}
    drop: set = set()
    for p in paths:
        if Path(p).suffix.lower() not in FEATURE_EXTENSIONS:
            continue
        found = _sidecar_source(Path(p))
        if found is None or found[0] not in videos:
            continue
        video = videos[found[0]]
        if source_mismatch(found[1], video) is None:
            drop.add(id(video))
            note(f"{video}: its features {p} are an input too; detecting it once, from the features")
        else:
            drop.add(id(p))
            note(f"{p}: features of {video}, also an input, which changed since; detecting it once, from the video")
    return [p for p in paths if id(p) not in drop]


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"I/N"`` (0 <= I < N) -> (I, N). ``None`` or "" -> the torchrun rank's shard (RANK/WORLD_SIZE), else None."""
    if text is None or not str(text).strip():
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None and world.strip() not in ("", "1"):
            try:
                return parse_shard(f"{int(rank)}/{int(world)}")
            except ValueError as e:
                raise InputError(f"RANK={rank!r} / WORLD_SIZE={world!r} from the environment are not a shard") from e
        return None
    parts = str(text).strip().split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {text!r}: need N >= 1 and 0 <= I < N (shards are numbered from 0)")
    return index, count


def shard_of(path: Path, count: int) -> int:
    """Shard of one input: a stable hash of its file name (not its directory, nor the order of the inputs).

    The same file lands in the same shard on every machine and in every run, whatever else is in the batch.
    """
    return zlib.crc32(path.name.encode("utf-8")) % count


def select_shard(paths: Sequence[Path], index: int, count: int) -> list[Path]:
    """The inputs of shard ``index`` of ``count``: every input is in exactly one shard."""
    if not 0 <= index < count:
        raise InputError(f"shard {index}/{count} does not exist")
    return [p for p in paths if shard_of(Path(p), count) == index]
