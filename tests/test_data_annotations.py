"""Annotations and zero-shot splits (stale_cli/model/data/annotations.py, stale_cli/model/data/splits.py): the
THUMOS14 fixture, malformed files as one-line errors, the 40 splits and class names matched across spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from stale_cli.errors import DataError, InputError
from stale_cli.model.data.annotations import load_annotations, parse_annotations
from stale_cli.model.data.splits import class_key, list_splits, load_split, match_classes


MINI = Path(__file__).parent / "fixtures" / "thumos14_mini.json"  # 5 THUMOS14 videos, copied from the real file


# ---------------------------------------------------------------- annotations


def test_thumos_fixture_loads_with_subsets_and_ambiguous_dropped():
    ann = load_annotations(MINI)
    assert len(ann.videos) == 5 and ann.subsets() == ["test", "val"]
    assert len(ann.classes) == 20 and "Ambiguous" not in ann.classes
    v = ann.videos["video_validation_0000160"]  # 7 annotations in the file, 3 of them Ambiguous
    assert len(v.instances) == 4 and {i.label for i in v.instances} == {"CleanAndJerk"}
    val = ann.select_subset("val")
    assert sorted(val.videos) == ["video_validation_0000151", "video_validation_0000156", "video_validation_0000160"]
    assert val.videos["video_validation_0000151"].instances[0].start == pytest.approx(10.2)
    assert val.labels() == ["CleanAndJerk"]


def test_numeric_strings_and_no_classes_list():
    ann = parse_annotations({"database": {
        "a": {"subset": "training", "duration": "12.5",
              "annotations": [{"segment": ["1.5", "3"], "label": "Long jump"}, {"segment": [4, 5], "label": "BMX"}]},
    }})
    v = ann.videos["a"]
    assert v.duration == 12.5 and (v.instances[0].start, v.instances[0].end) == (1.5, 3.0)
    assert ann.classes == ("BMX", "Long jump")


def test_unknown_subset_lists_the_subsets():
    with pytest.raises(DataError, match=r"no videos in subset 'train'.*test, val"):
        load_annotations(MINI, subset="train")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"videos": {}}', "no 'database'"),
    ('{"database": {"a": {"annotations": [{"segment": [3, 1], "label": "X"}]}}}', "ends before it starts"),
    ('{"database": {"a": {"annotations": [{"segment": ["x", 1], "label": "X"}]}}}', "must be a number"),
    ('{"database": {"a": {"annotations": [{"segment": [1, 2]}]}}}', "expected"),
    ('{"database": {"a": {"duration": -1, "annotations": []}}}', "duration must be positive"),
    ('{"classes": ["A"], "database": {"a": {"annotations": [{"segment": [1, 2], "label": "B"}]}}}', "missing from"),
])
def test_malformed_annotations_are_one_line_data_errors(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        load_annotations(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_annotation_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_annotations(tmp_path / "nope.json")


# ---------------------------------------------------------------- splits


def test_all_forty_splits_load_and_are_disjoint():
    names = list_splits()
    assert len(names) == 40 and "thumos14/75_25/3" in names and "activitynet13/50_50/9" in names
    for name in names:
        seen, unseen = load_split(name)
        assert seen and unseen and not set(seen) & set(unseen)
    seen, unseen = load_split("thumos14/75_25/0")
    assert (len(seen), len(unseen)) == (15, 5) and "BaseballPitch" in unseen
    seen, unseen = load_split("activitynet13/50_50/2")
    assert (len(seen), len(unseen)) == (100, 100)


def test_thumos_splits_match_the_real_annotation_labels():
    ann = load_annotations(MINI)
    for name in list_splits()[:20]:  # the thumos14 ones
        seen, unseen = load_split(name)
        assert sorted(match_classes(seen + unseen, ann.classes, name)) == sorted(ann.classes)


@pytest.mark.parametrize("name", ["thumos14/75_25/10", "thumos/75_25/3", "thumos14/60_40/1", "thumos14", ""])
def test_unknown_split_lists_the_valid_ones(name):
    with pytest.raises(InputError, match=r"unknown split.*thumos14 or activitynet13.*75_25 or 50_50.*0-9"):
        load_split(name)


def test_class_names_match_across_spellings():
    assert class_key("Baton twirling") == class_key("BatonTwirling") == class_key("baton-twirling")
    assert class_key("Rock-paper-scissors") == class_key("Rock paper scissors")
    assert class_key("CliffDiving") != class_key("Diving")
    labels = ["Baton twirling", "Rock-paper-scissors", "BMX"]
    assert match_classes(["BatonTwirling", "rock paper scissors", "bmx"], labels, "s") == labels


def test_split_class_absent_from_annotations_is_named():
    with pytest.raises(DataError, match=r"thumos14/75_25/0: class 'Billiards' not found in the annotations"):
        match_classes(["Billiards", "CleanAndJerk"], ["CleanAndJerk", "HighJump"], "thumos14/75_25/0")
