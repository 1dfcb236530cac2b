"""Windows (stale_cli/model/data/windows.py): sliding and resized windows for training and for detection, feature rows
centred on their timestamps, label assignment from seconds, centring a video's features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stale_cli.errors import InputError
from stale_cli.model.data.annotations import parse_annotations
from stale_cli.model.data.dataset import video_instances
from stale_cli.model.data.windows import (
    DataConfig, assign_labels, cut_windows, detection_grid, feature_timeline, plan_detection_windows, plan_windows,
)
from stale_cli.timeline import Timeline

from feature_files import meta_for  # tests/ is on sys.path (rootdir conftest)


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


def test_feature_timeline_centres_rows_on_their_timestamps():
    tl = feature_timeline(meta_for(10, 5.0, origin=0.1), 10)
    assert tl == Timeline(0.0, 0.2, 10)  # row k is the frame at 0.1 + k / 5, the centre of snippet k
    assert json.dumps(meta_for(1, 1.0))  # sidecar stays JSON-serialisable


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


def test_center_video_by_hand():
    from stale_cli.model.data.windows import center_video

    x = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    # normalised rows (1, 0), (0, 1); their mean (0.5, 0.5) removed; renormalised
    np.testing.assert_allclose(center_video(x, 1.0), np.array([[1, -1], [-1, 1]]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_array_equal(center_video(x, 0.0), x)  # 0: the features as extracted


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
