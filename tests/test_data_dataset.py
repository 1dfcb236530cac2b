"""The window dataset (stale_cli/model/data/dataset.py): items and collate, the feature files it reads and the index of
them, resize mode, class-balanced repeat factors and their sampler, unseen actions in training windows, jitter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stale_cli.errors import DataError
from stale_cli.model.data.annotations import parse_annotations
from stale_cli.model.data.dataset import WindowDataset, collate_windows, load_video_set
from stale_cli.model.data.windows import DataConfig
from stale_cli.sidecar import write_features

from feature_files import meta_for  # tests/ is on sys.path (rootdir conftest)


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
