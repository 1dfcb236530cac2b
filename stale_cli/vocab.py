"""Class vocabularies: parsing user lists and turning class names into words for CLIP prompts."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from stale_cli.errors import InputError

# Annotation labels that name no action: dropped from class lists and from the ground truth (THUMOS14's).
IGNORED_LABELS = frozenset({"ambiguous"})  # compared case-insensitively

# The folders of the shipped split files (stale_cli/splits), named after the datasets (stale_cli.model.datasets, which
# configures them); THUMOS14's spelling of a name both hold is the one kept.
SPLIT_FOLDERS = ("thumos14", "activitynet13")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def class_to_text(name: str) -> str:
    """``BaseballPitch`` -> "baseball pitch", ``high_jump`` -> "high jump", "Pole Vault" -> "pole vault"."""
    words = _CAMEL.sub(" ", name.strip())
    words = re.sub(r"[_\-]+", " ", words)
    return " ".join(words.split()).lower()


def check_classes(names: list[str], source: str = "class list") -> list[str]:
    """Strip names and reject an empty list, empty names and duplicates (after normalisation)."""
    names = [n.strip() for n in names]
    if not names or all(not n for n in names):
        raise InputError(f"{source}: no class names given")
    if any(not n for n in names):
        raise InputError(f"{source}: empty class name (check for stray commas or blank entries)")
    seen: dict[str, str] = {}
    for n in names:
        key = class_to_text(n)
        if not "".join(c for c in key if not unicodedata.category(c).startswith("C")).strip():
            # "_" or "--", or control characters only: nothing left for CLIP to read
            raise InputError(f"{source}: class name {n!r} has no words (only separators or control characters)")
        if key in seen:
            raise InputError(f"{source}: duplicate class name {n!r} (same as {seen[key]!r})")
        seen[key] = n
    return names


def parse_classes(text: str) -> list[str]:
    """``"high jump, pole vault"`` -> ["high jump", "pole vault"]."""
    return check_classes(text.split(","), "--classes")


def read_name_lines(path: str | Path, what: str = "classes file") -> list[tuple[int, str]]:
    """(line number from 1, stripped line) of each line of a text file of names, blank lines and lines starting
    with ``#`` skipped; a file that cannot be read -> InputError calling it ``what``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Excel, Notepad) is not in the first name
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read {what} ({e})") from e
    return [(n, ln.strip()) for n, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")]


def read_classes_file(path: str | Path) -> list[str]:
    """One class per line; blank lines and lines starting with ``#`` are skipped."""
    return check_classes([line for _, line in read_name_lines(path)], str(path))


def name_key(name: str) -> str:
    """Spelling-insensitive key: ``BatonTwirling``, ``Baton twirling``, ``baton-twirling`` -> "batontwirling"."""
    return re.sub(r"[^a-z0-9]", "", class_to_text(name))


def generic_action_names() -> list[str]:
    """The 213 distinct action names shipped with stale (THUMOS14's 20 and ActivityNet's 200, from the split
    files; 7 are in both), each once: the generic competitors of a query (:func:`distractors`)."""
    from importlib import resources

    names: dict[str, str] = {}
    root = resources.files("stale_cli").joinpath("splits")
    for dataset in SPLIT_FOLDERS:
        for part in ("train", "test"):
            text = root.joinpath(dataset, "75_25", part, "split_0.list").read_text(encoding="utf-8")
            for line in text.splitlines():
                if line.strip():
                    names.setdefault(name_key(line), line.strip())
    return list(names.values())


def distractors(query: list[str], extra: list[str] | tuple[str, ...] = (), generic: bool = True) -> list[str]:
    """The names a snippet may go to instead of the ones asked for: ``extra`` (a checkpoint's training names),
    then the generic action names, without any that match a query name (or each other) after normalisation.

    Detection scores a snippet against the query *and* these, and reports only the query: asked "when does
    high jump happen?" of a video of pole vaulting, the snippets go to "pole vault", not to the only name asked.
    """
    taken = {name_key(n) for n in query}
    out = []
    for n in list(extra) + (generic_action_names() if generic else []):
        key = name_key(n)
        if key and key not in taken:
            taken.add(key)
            out.append(n)
    return out
