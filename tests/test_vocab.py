"""The open vocabulary (stale_cli/vocab.py): the shipped generic action names and the distractor names scored beside
a query."""

from __future__ import annotations

from stale_cli.model import datasets
from stale_cli.vocab import SPLIT_FOLDERS, distractors, generic_action_names, name_key


def test_generic_names_are_the_shipped_names_each_once():
    names = generic_action_names()
    # THUMOS14's 20 and ActivityNet's 200, of which 7 are the same action spelled alike (pole vault, high jump, ...)
    assert len(names) == len({name_key(n) for n in names}) == 213
    assert "PoleVault" in names or "Pole vault" in names


def test_the_split_folders_are_the_datasets():
    # vocab reads the split files without importing the dataset presets (which sit above it, docs/design.md)
    assert SPLIT_FOLDERS == tuple(datasets.DATASETS)


def test_distractors_leave_out_the_query_in_any_spelling_and_put_training_names_first():
    got = distractors(["pole vault", "my own action"], ["HighJump", "PoleVault", "Diving"])
    assert got[:2] == ["HighJump", "Diving"]  # the checkpoint's names first, the query's spelling dropped
    keys = [name_key(n) for n in got]
    assert "polevault" not in keys and "myownaction" not in keys and len(keys) == len(set(keys))
    assert distractors(["x"], ["HighJump"], generic=False) == ["HighJump"]
