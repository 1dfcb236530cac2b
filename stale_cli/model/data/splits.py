"""The standard zero-shot class splits (EffPrompt, Ju et al. 2022), shipped as package data.

``stale_cli/splits/<dataset>/<75_25|50_50>/<train|test>/split_<k>.list``: ``train`` lists the seen classes,
``test`` the unseen ones; a split is named ``<dataset>/<ratio>/<k>``, e.g. ``thumos14/75_25/3``. The licence
notice ``LICENSE-EffPrompt.txt`` ships beside them.

Split files and annotation files spell class names differently (``Baton twirling`` vs ``BatonTwirling`` vs
``baton-twirling``), so names are matched after :func:`class_key` normalisation.
"""

from __future__ import annotations

from importlib import resources

from stale_cli.errors import DataError, InputError
from stale_cli.model import datasets
from stale_cli.vocab import name_key

DATASETS = tuple(datasets.DATASETS)  # the split files' folders are the datasets' names
RATIOS = ("75_25", "50_50")
NUM_SPLITS = 10


def list_splits() -> list[str]:
    """Every shipped split name, e.g. ``thumos14/75_25/3``."""
    return [f"{d}/{r}/{k}" for d in DATASETS for r in RATIOS for k in range(NUM_SPLITS)]


def _read_list(dataset: str, ratio: str, part: str, k: int) -> list[str]:
    res = resources.files("stale_cli").joinpath("splits", dataset, ratio, part, f"split_{k}.list")
    lines = res.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def load_split(name: str) -> tuple[list[str], list[str]]:
    """``"thumos14/75_25/3"`` -> (seen class names, unseen class names) as spelled in the split files."""
    parts = name.strip().strip("/").split("/")
    if parts:
        parts[0] = datasets.ALIASES.get(parts[0], parts[0])
    if len(parts) != 3 or parts[0] not in DATASETS or parts[1] not in RATIOS or parts[2] not in map(str, range(NUM_SPLITS)):
        raise InputError(
            f"unknown split {name!r}; valid splits are <dataset>/<ratio>/<k> with dataset "
            f"{' or '.join(DATASETS)}, ratio {' or '.join(RATIOS)} (seen_unseen %), k 0-{NUM_SPLITS - 1}, "
            "e.g. thumos14/75_25/3"
        )
    dataset, ratio, k = parts[0], parts[1], int(parts[2])
    return _read_list(dataset, ratio, "train", k), _read_list(dataset, ratio, "test", k)


class_key = name_key  # spelling-insensitive: BatonTwirling, Baton twirling, baton-twirling -> "batontwirling"


def match_classes(names: list[str], available: list[str] | tuple[str, ...], source: str) -> list[str]:
    """Map each of ``names`` to its spelling in ``available`` (annotation labels), keeping the order of ``names``.

    A name with no match -> DataError naming it (and ``source``, e.g. the split) and a few available labels.
    """
    by_key = {class_key(a): a for a in available}
    out, missing = [], []
    for n in names:
        hit = by_key.get(class_key(n))
        if hit is None:
            missing.append(n)
        else:
            out.append(hit)
    if missing:
        shown = ", ".join(sorted(available)[:8]) + (", ..." if len(available) > 8 else "")
        raise DataError(
            f"{source}: class{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found in the "
            f"annotations (labels there: {shown or 'none'}); check the split matches the dataset"
        )
    return out
