"""The data package (stale_cli/model/data/): annotations, zero-shot splits, windows for training and for detection,
label assignment, the window dataset and the index of feature files it reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stale_cli.errors import DataError, InputError
from stale_cli.model.data.annotations import load_annotations, parse_annotations
from stale_cli.model.data.dataset import WindowDataset, collate_windows, load_video_set, video_instances
from stale_cli.model.data.splits import class_key, list_splits, load_split, match_classes
from stale_cli.model.data.windows import (
    DataConfig, assign_labels, cut_windows, detection_grid, feature_timeline, plan_detection_windows, plan_windows,
)
from stale_cli.sidecar import write_features
from stale_cli.timeline import Timeline

MINI = Path(__file__).parent / "fixtures" / "thumos14_mini.json"  # 5 THUMOS14 videos, copied from the real file


def meta_for(num_rows: int, fps: float, origin: float = 0.0) -> dict:
    return {
        "fps": fps, "timestamps": [origin + k / fps for k in range(num_rows)], "duration": origin + num_rows / fps,
        "source": "synthetic.mp4", "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": num_rows,
    }


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


# ---------------------------------------------------------------- windows


def test_sliding_windows_cover_the_video_and_end_at_the_last_row():
    cfg = DataConfig(mode="window", num_snippets=8, overlap=0.5)
    ws = plan_windows(21, meta_for(21, 2.0), cfg)
    assert [w.start_row for w in ws] == [0, 4, 8, 12, 13]
    assert all(w.valid_len == 8 for w in ws)
    short = plan_windows(5, meta_for(5, 2.0), cfg)
    assert [(w.start_row, w.valid_len) for w in short] == [(0, 5)]


def test_window_timeline_round_trip_with_feature_rows():
    fps, origin = 4.0, 0.3
    meta = meta_for(40, fps, origin)
    feats = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    cfg = DataConfig(mode="window", num_snippets=16, overlap=0.25)
    for w, x in cut_windows(feats, meta, cfg):
        # Snippet i of the window is feature row start_row + i, centred at that row's timestamp.
        rows = np.arange(w.valid_len)
        np.testing.assert_allclose(w.timeline.to_seconds(rows + 0.5), np.array(meta["timestamps"])[w.start_row + rows])
        np.testing.assert_allclose(w.timeline.to_index(w.timeline.to_seconds(rows + 0.5)), rows + 0.5)
        np.testing.assert_array_equal(x[: w.valid_len], feats[w.start_row : w.start_row + w.valid_len])
        assert w.timeline.step == pytest.approx(1 / fps) and x.shape == (16, 3)


def test_resize_mode_interpolates_the_whole_video():
    # 10 rows at 2 fps = 5 s; resized to 4 snippets of 1.25 s, centres 0.625, 1.875, 3.125, 4.375 s.
    # Row k is the frame at k/2 s, so the snippet centres fall at rows 1.25, 3.75, 6.25, 8.75.
    feats = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], dtype=np.float32)
    (w, x), = cut_windows(feats, meta_for(10, 2.0), DataConfig(mode="resize", num_snippets=4, overlap=0.0))
    assert w.valid_len == 4 and w.timeline == Timeline(0.0, 1.25, 4)
    np.testing.assert_allclose(x[:, 0], [1.25, 3.75, 6.25, 8.75], rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], [12.5, 37.5, 62.5, 87.5], rtol=1e-6)


def test_bad_data_config_is_rejected():
    with pytest.raises(InputError, match="mode"):
        DataConfig(mode="crop")
    with pytest.raises(InputError, match="overlap"):
        DataConfig(overlap=1.0)


def test_a_long_resize_mode_video_gets_short_snippets():
    cfg = DataConfig(mode="resize", num_snippets=100, overlap=0.0)  # an ActivityNet checkpoint
    # 2 minutes: resized whole as in training.
    meta = meta_for(120, fps=1.0)
    (w,) = plan_detection_windows(120, meta, cfg)
    assert w == plan_windows(120, meta, cfg)[0] and w.timeline.step == pytest.approx(1.2)
    # 2 hours: snippets of at most max_snippet_seconds, windows of T overlapping by half, covering the video.
    N = 7200
    meta = meta_for(N, fps=1.0)
    grid = detection_grid(N, meta, cfg)
    windows = plan_detection_windows(N, meta, cfg)
    assert grid.step <= cfg.max_snippet_seconds and grid.num * grid.step == pytest.approx(7200.0)
    assert all(w.timeline.step == grid.step and w.valid_len == 100 for w in windows)
    assert windows[0].start_row == 0 and windows[-1].start_row + 100 == grid.num
    assert all(b.start_row - a.start_row <= 50 for a, b in zip(windows, windows[1:]))
    # Each window's input is the features interpolated at its snippets' centres.
    feats = np.arange(N, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row k holds k, its frame at k s
    w, x = cut_windows(feats, meta, cfg)[3]
    np.testing.assert_allclose(x[:, 0], np.clip(w.timeline.centres(), 0, N - 1), atol=1e-3)  # row k: k s


# ---------------------------------------------------------------- label assignment


def test_label_assignment_from_seconds_by_hand():
    # A hand-made video: 2 snippets per second, window of 12 snippets starting at 1.0 s, 10 of them real.
    # Snippet i covers [1 + i/2, 1.5 + i/2) s, centre 1.25 + i/2: 1.25 1.75 2.25 2.75 3.25 3.75 4.25 4.75 5.25 ...
    tl = Timeline(origin=1.0, step=0.5, num=12)
    instances = [
        (1.6, 3.0, 0),  # centres 1.75 2.25 2.75 -> snippets 1-3, class 0
        (3.9, 5.3, 1),  # centres 4.25 4.75 5.25 -> snippets 6-8, class 1
        (4.5, 4.6, 0),  # inside the previous one, no centre inside: its midpoint 4.55 s is in snippet 7
        (5.9, 9.0, 1),  # centres 6.25 ... -> snippets 10, 11: padding, never foreground
        (0.0, 1.1, 0),  # before the first centre; midpoint 0.55 s lies before the window: dropped
    ]
    t = assign_labels(tl, valid_len=10, instances=instances, num_classes=2)
    K = 2
    np.testing.assert_array_equal(t["labels"], [K, 0, 0, 0, K, K, 1, 0, 1, K, K, K])
    np.testing.assert_array_equal(t["fg"], [0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(t["valid"], [True] * 10 + [False] * 2)
    m = t["masks"]
    first = np.zeros(12)
    first[1:4] = 1
    long1 = np.zeros(12)
    long1[6:9] = 1
    short = np.zeros(12)
    short[7] = 1
    for col in (1, 2, 3):
        np.testing.assert_array_equal(m[:, col], first)
    for col in (6, 8):  # the long class-1 instance keeps its full extent as its mask
        np.testing.assert_array_equal(m[:, col], long1)
    np.testing.assert_array_equal(m[:, 7], short)  # the shorter overlapping instance wins snippet 7
    for col in (0, 4, 5, 9, 10, 11):
        assert m[:, col].sum() == 0


def test_a_snippet_in_instances_of_two_classes_has_both():
    # CliffDiving (0) and Diving (1) label the same span, 2-5 s; cricket bowling (2) 6-8 s runs into the shot
    # (3) 7.5-10 s. One snippet per second, centres 0.5, 1.5, ...
    inst = [(2.0, 5.0, 0), (2.0, 5.0, 1), (6.0, 8.0, 2), (7.5, 10.0, 3)]
    t = assign_labels(Timeline(0.0, 1.0, 10), 10, inst, num_classes=4)
    K = 4
    # equal lengths: the later wins; snippet 7 (centre 7.5 s) is in both cricket instances: the shorter wins
    np.testing.assert_array_equal(t["labels"], [K, K, 1, 1, 1, K, 2, 2, 3, 3])
    np.testing.assert_array_equal(t["also"], [K, K, 0, 0, 0, K, K, 3, K, K])


def test_classes_outside_the_vocabulary_are_background(tmp_path):
    ann = parse_annotations({"database": {"v": {"subset": "val", "duration": 10, "annotations": [
        {"segment": [1, 3], "label": "HighJump"}, {"segment": [5, 8], "label": "PoleVault"}]}}})
    inst = video_instances(ann.videos["v"], ["HighJump"])  # PoleVault is an unseen class
    assert inst == [(1.0, 3.0, 0)]
    t = assign_labels(Timeline(0.0, 1.0, 10), 10, inst, num_classes=1)
    np.testing.assert_array_equal(t["labels"], [1, 0, 0, 1, 1, 1, 1, 1, 1, 1])


# ---------------------------------------------------------------- dataset


def write_video(dirpath: Path, vid: str, rows: int, fps: float = 2.0, dim: int = 6, seed: int = 0) -> None:
    feats = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    write_features(dirpath / f"{vid}.npy", feats, meta_for(rows, fps))


def small_annotations():
    db = {f"v{i}": {"subset": "val", "duration": 30, "annotations": [{"segment": [2 + i, 6 + i], "label": "A"}]}
          for i in range(3)}
    return parse_annotations({"database": db})


def test_dataset_items_and_collate(tmp_path):
    for i in range(3):
        write_video(tmp_path / "sub", f"v{i}", rows=60, seed=i)  # found recursively
    ann = small_annotations()
    vs = load_video_set(tmp_path, list(ann.videos.values()))
    assert vs.feature_dim == 6 and vs.feature_fps() == 2.0 and not vs.missing
    cfg = DataConfig(mode="window", num_snippets=16, overlap=0.5, empty_window_keep=0.0)
    ds = WindowDataset(vs, ["A"], cfg, training=True)
    full = WindowDataset(vs, ["A"], cfg, training=False)
    assert 0 < len(ds) < len(full)  # windows without an action were dropped for training only
    batch = collate_windows([ds[i] for i in range(len(ds))])
    B = len(ds)
    assert batch["features"].shape == (B, 16, 6) and batch["masks"].shape == (B, 16, 16)
    assert batch["labels"].dtype == torch.int64 and batch["valid"].dtype == torch.bool
    assert (batch["fg"].sum(1) > 0).all()


def test_videos_without_features_are_counted(tmp_path):
    write_video(tmp_path, "v1", rows=20)
    ann = small_annotations()
    vs = load_video_set(tmp_path, list(ann.videos.values()))
    assert [v.video_id for v in vs.videos] == ["v1"] and vs.missing == ["v0", "v2"]
    with pytest.raises(DataError, match="none of the 3 annotated videos has a feature file"):
        load_video_set(tmp_path, [ann.videos["v0"], ann.videos["v2"], ann.videos["v0"]])


def test_corrupt_feature_file_is_named(tmp_path):
    write_video(tmp_path, "v0", rows=20)
    write_video(tmp_path, "v1", rows=20)
    (tmp_path / "v1.npy").write_bytes(b"garbage, not an npy file")
    ann = small_annotations()
    with pytest.raises(DataError, match=r"v1\.npy: corrupt feature file"):
        load_video_set(tmp_path, list(ann.videos.values()))


def test_feature_width_must_agree(tmp_path):
    write_video(tmp_path, "v0", rows=20, dim=6)
    write_video(tmp_path, "v1", rows=20, dim=8)
    with pytest.raises(DataError, match="different widths"):
        load_video_set(tmp_path, list(small_annotations().videos.values()))


def test_feature_timeline_centres_rows_on_their_timestamps():
    tl = feature_timeline(meta_for(10, 5.0, origin=0.1), 10)
    assert tl == Timeline(0.0, 0.2, 10)  # row k is the frame at 0.1 + k / 5, the centre of snippet k
    assert json.dumps(meta_for(1, 1.0))  # sidecar stays JSON-serialisable


def test_resize_mode_keeps_only_the_resized_input_and_the_same_items(tmp_path):
    for i in range(3):
        write_video(tmp_path, f"v{i}", rows=53 + 10 * i, fps=3.0, seed=i)
    videos = list(small_annotations().videos.values())
    cfg = DataConfig(mode="resize", num_snippets=16, overlap=0.0)
    full = WindowDataset(load_video_set(tmp_path, videos), ["A"], cfg, training=True)
    compact_set = load_video_set(tmp_path, videos, cfg)
    compact = WindowDataset(compact_set, ["A"], cfg, training=True)
    assert all(f.shape == (16, 6) for f in compact_set.features.values()) and compact_set.feature_fps() == 3.0
    assert len(full) == len(compact) == 3
    for a, b in zip(full, compact):
        assert a["labels"].tolist() == b["labels"].tolist() and torch.equal(a["masks"], b["masks"])
        torch.testing.assert_close(a["features"], b["features"], atol=2e-3, rtol=2e-3)  # float16 storage
        assert a["fg"].sum() > 0


def test_repeat_factors_by_hand():
    from stale_cli.model.data.dataset import repeat_factors

    # K = 2, 6 windows: class 0 in 4 of them (f = 2/3), class 1 in 1 (f = 1/6), one window empty; t = 1/K = 0.5
    windows = [frozenset({0})] * 4 + [frozenset({1}), frozenset()]
    r = repeat_factors(windows, 2)
    # r(0) = max(1, sqrt(0.5 / (2/3))) = 1; r(1) = sqrt(0.5 / (1/6)) = sqrt(3); an empty window keeps 1
    np.testing.assert_allclose(r, [1, 1, 1, 1, np.sqrt(3), 1])
    # a window of both classes takes the larger factor
    np.testing.assert_allclose(repeat_factors(windows[:4] + [frozenset({0, 1}), frozenset()], 2)[4], np.sqrt(3))


def test_repeat_factor_sampler_draws_rare_windows_more_often_and_splits_ranks():
    from stale_cli.model.data.dataset import RepeatFactorSampler

    r = np.array([1, 1, 1, 1, np.sqrt(3), 1])
    s = RepeatFactorSampler(r, seed=3)
    assert len(s) == 7  # round(sum r) = round(6.73)
    draws = []
    for epoch in range(400):
        s.set_epoch(epoch)
        order = list(s)
        assert len(order) == 7 and set(order) == set(range(6))  # every window at least once an epoch
        draws.append(order.count(4))
    # expected count of window 4: 1.73 drawn by rounding, plus its share of the top-up when rounding fell short
    assert 1.7 < np.mean(draws) < 1.95
    s.set_epoch(5)
    assert list(s) == list(s)  # an epoch's order depends on seed and epoch only
    halves = [RepeatFactorSampler(r, seed=3, rank=k, world=2) for k in (0, 1)]
    whole = RepeatFactorSampler(r, seed=3, rank=0, world=1)
    whole.total = 8  # what two ranks draw together: ceil(7 / 2) each
    assert len(halves[0]) == len(halves[1]) == 4
    merged = [None] * 8
    merged[0::2], merged[1::2] = list(halves[0]), list(halves[1])
    assert merged == list(whole)


def test_feature_rows_are_centred_on_their_timestamps():
    from stale_cli.model.data.windows import feature_timeline, plan_windows, DataConfig

    meta = {"fps": 4.0, "timestamps": [1.0 + k / 4 for k in range(40)]}
    src = feature_timeline(meta, 40)
    np.testing.assert_allclose(src.centres(), meta["timestamps"])
    # A run of rows [a, b) spans half a row either side of its first and last frames.
    assert float(src.to_seconds(8)) == pytest.approx(meta["timestamps"][8] - 0.125)
    assert float(src.to_seconds(12)) == pytest.approx(meta["timestamps"][11] + 0.125)
    for w in plan_windows(40, meta, DataConfig(num_snippets=16, overlap=0.5)):
        np.testing.assert_allclose(w.timeline.centres()[: w.valid_len],
                                   meta["timestamps"][w.start_row : w.start_row + w.valid_len])


def test_training_windows_holding_only_unseen_actions_are_dropped(tmp_path):
    db = {"v": {"subset": "val", "duration": 20.0, "annotations": [
        {"segment": [1, 4], "label": "Seen"}, {"segment": [17, 19.5], "label": "Unseen"}]}}
    ann = parse_annotations({"database": db})
    stamps = np.arange(20.0)
    write_features(tmp_path / "v.npy", np.zeros((20, 8), np.float32), {
        "fps": 1.0, "timestamps": stamps.tolist(), "duration": 20.0, "source": "v.mp4", "clip_model": "x",
        "clip_weights": "random", "num_frames": 20})
    cfg = DataConfig(num_snippets=8, overlap=0.0, empty_window_keep=1.0)  # windows [0,8) [8,16) [12,20)
    vs = load_video_set(tmp_path, list(ann.videos.values()), cfg)
    kept = [w.start_row for _, w, *_ in WindowDataset(vs, ["Seen"], cfg, training=True).items]
    assert kept == [0, 8]  # [8, 16) is background only (kept, keep rate 1); [12, 20) holds only the unseen action
    assert len(WindowDataset(vs, ["Seen"], cfg, training=False).items) == 3  # detection sees every window


def test_training_feature_index_follows_links(tmp_path, caplog):
    from stale_cli.model.data.dataset import index_features

    feats, shared = tmp_path / "feats", tmp_path / "shared"
    feats.mkdir()
    shared.mkdir()
    (feats / "v1.npy").write_bytes(b"")
    (shared / "v2.npy").write_bytes(b"")
    os.symlink(shared, feats / "more")
    os.symlink(feats, shared / "back")  # loop through the link
    os.symlink(tmp_path / "gone", feats / "old")
    with caplog.at_level("WARNING"):
        index = index_features(feats)
    assert sorted(index) == ["v1", "v2"]
    assert any("broken symbolic link" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- strict open-vocabulary training; centring a video


def test_strict_training_calls_unseen_instances_background():
    from stale_cli.model.data.annotations import parse_annotations
    from stale_cli.model.data.dataset import VideoSet, WindowDataset
    from stale_cli.model.data.windows import DataConfig

    fps, rows = 2.0, 40
    ann = parse_annotations({"database": {"v": {"subset": "train", "duration": rows / fps, "annotations": [
        {"label": "seen", "segment": [2.0, 6.0]}, {"label": "unseen", "segment": [10.0, 14.0]}]}}})
    meta = {"fps": fps, "timestamps": [k / fps for k in range(rows)], "duration": rows / fps}
    vs = VideoSet(list(ann.videos.values()), {"v": np.zeros((rows, 4), np.float16)}, {"v": meta})
    cfg = DataConfig(num_snippets=rows, overlap=0.0, jitter=0.0, empty_window_keep=1.0)
    default = WindowDataset(vs, ["seen"], cfg)[0]
    strict = WindowDataset(vs, ["seen"], cfg, ignore_unseen=False)[0]
    inside = slice(int(10 * fps), int(14 * fps))
    assert default["ignore"][inside].all() and not strict["ignore"].any()
    assert (strict["labels"][inside] == 1).all()  # background (K = 1)


def test_center_video_by_hand():
    from stale_cli.model.data.windows import center_video

    x = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    # normalised rows (1, 0), (0, 1); their mean (0.5, 0.5) removed; renormalised
    np.testing.assert_allclose(center_video(x, 1.0), np.array([[1, -1], [-1, 1]]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_array_equal(center_video(x, 0.0), x)  # 0: the features as extracted


def test_a_jittered_training_window_keeps_its_action(tmp_path):
    """The random shift of a training window never moves every action out of a window kept for its actions."""
    for i in range(3):
        write_video(tmp_path, f"v{i}", rows=60, seed=i)
    vs = load_video_set(tmp_path, list(small_annotations().videos.values()))
    cfg = DataConfig(mode="window", num_snippets=16, overlap=0.5, empty_window_keep=0.0, jitter=0.5)
    ds = WindowDataset(vs, ["A"], cfg, training=True)
    assert ds.max_shift > 0
    for seed in range(40):
        torch.manual_seed(seed)
        assert all(ds[i]["fg"].sum() > 0 for i in range(len(ds)))
