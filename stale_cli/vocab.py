"""Class vocabularies: parsing user lists and turning class names into words for CLIP prompts."""

from __future__ import annotations

import re
from pathlib import Path

from stale_cli.errors import InputError

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
        if not key:  # "_" or "--": nothing left for CLIP to read
            raise InputError(f"{source}: class name {n!r} has no words (only separators)")
        if key in seen:
            raise InputError(f"{source}: duplicate class name {n!r} (same as {seen[key]!r})")
        seen[key] = n
    return names


def parse_classes(text: str) -> list[str]:
    """``"high jump, pole vault"`` -> ["high jump", "pole vault"]."""
    return check_classes(text.split(","), "--classes")


def read_classes_file(path: str | Path) -> list[str]:
    """One class per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: classes file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read classes file ({e})") from e
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return check_classes(names, str(path))
