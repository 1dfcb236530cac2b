"""The context foreground L_ctx (stale_cli/model/context.py): its inputs worked out by hand, a fit that carries to a
class it never saw, its record in a checkpoint, and the rows it is fitted on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stale_cli.model.context import ContextForeground, context_inputs, fit_context_foreground


def test_inputs_worked_out_by_hand():
    """Rows (2, 0), (1, 0), (0, 3) normalise to (1, 0), (1, 0), (0, 1): median (1, 0), mean (2/3, 1/3)."""
    z = context_inputs(np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32))
    np.testing.assert_allclose(z[:, 0], [0.0, 0.0, math.sqrt(2)], atol=1e-6)
    np.testing.assert_allclose(z[:, 1], [math.sqrt(2) / 3, math.sqrt(2) / 3, 2 * math.sqrt(2) / 3], atol=1e-6)
    np.testing.assert_array_equal(z[:, 2], 1.0)
    # a rotation of the feature space, or a change of scale, changes nothing: no input can single out a class
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(2, 2)))
    np.testing.assert_allclose(context_inputs(5.0 * np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]]) @ q), z, atol=1e-6)


def scene_video(rng, dim: int, actions: list[tuple[np.ndarray, int, int]], n: int = 120
                ) -> tuple[np.ndarray, np.ndarray]:
    """A video whose own scene (a random direction) is replaced by each action's direction over its rows; the
    foreground target (n,)."""
    scene = rng.normal(size=dim)
    x = scene + 0.3 * rng.normal(size=(n, dim))
    fg = np.zeros(n, np.float32)
    for direction, s, e in actions:
        x[s:e] = direction + 0.3 * rng.normal(size=(e - s, dim))
        fg[s:e] = 1.0
    return x.astype(np.float32), fg


def test_fit_on_two_classes_finds_a_third_it_never_saw():
    """Fitted on videos of classes A and B (class C's instances in them left out, as an unseen class's are), L_ctx
    tells C's rows from the scene on new videos: it learned "departs from the video's scene", not A or B."""
    rng = np.random.default_rng(1)
    dim = 64
    a, b, c = (rng.normal(size=dim) for _ in range(3))
    videos = []
    for k in range(8):
        x, fg = scene_video(rng, dim, [((a, b)[k % 2], 20, 45), (c, 70, 90)])
        keep = np.ones(len(x), bool)
        keep[70:90] = False  # class C is not a training class: its rows count neither way
        fg[70:90] = 0.0
        videos.append((x, fg, keep))
    context = fit_context_foreground(videos)
    assert context is not None and context.weights[0] > 0  # the farther from the median snippet, the likelier
    # its level is its mean on the training foreground rows
    assert context.level == pytest.approx(np.concatenate([context.probabilities(x)[f > 0] for x, f, _ in videos]).mean(),
                                          rel=1e-5)
    x, fg = scene_video(rng, dim, [(c, 30, 60)])
    p = context.probabilities(x)
    assert p.dtype == np.float32 and p.shape == (len(x),)
    assert p[fg == 1].min() > 0.5 > p[fg == 0].max()


def test_fit_needs_both_foreground_and_background():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    assert fit_context_foreground([(x, np.zeros(30, np.float32), np.ones(30, bool))]) is None
    assert fit_context_foreground([(x, np.ones(30, np.float32), np.ones(30, bool))]) is None
    assert fit_context_foreground([(x, np.ones(30, np.float32), np.zeros(30, bool))]) is None
    assert fit_context_foreground([]) is None


def test_relative_reading_worked_out_by_hand():
    """min(1, L_ctx / level); without a recorded level (older checkpoints), L_ctx itself."""
    l_ctx = np.array([0.1, 0.2, 0.4, 0.9], np.float32)
    np.testing.assert_allclose(ContextForeground((1.0, 0.0, 0.0), 0.4).relative(l_ctx), [0.25, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(ContextForeground((1.0, 0.0, 0.0)).relative(l_ctx), l_ctx)


def test_record_round_trip_and_damaged_records():
    context = ContextForeground((12.5, -3.0, -8.25))
    assert ContextForeground.from_dict(context.to_dict()) == context
    assert context.to_dict() == {"inputs": ["distance_to_median", "distance_to_mean", "bias"],
                                 "weights": [12.5, -3.0, -8.25]}
    leveled = ContextForeground((12.5, -3.0, -8.25), 0.625)
    assert ContextForeground.from_dict(leveled.to_dict()) == leveled
    assert leveled.to_dict()["foreground_level"] == 0.625
    for bad in ({"inputs": ["distance_to_median"], "weights": [1.0, 2.0, 3.0]},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, 2.0]},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, float("nan"), 0.0]},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, True, 0.0]},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": "123"},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, 2.0, 3.0],
                 "foreground_level": 0.0},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, 2.0, 3.0],
                 "foreground_level": 1.5},
                {"inputs": ["distance_to_median", "distance_to_mean", "bias"], "weights": [1.0, 2.0, 3.0],
                 "foreground_level": "high"},
                [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError):
            ContextForeground.from_dict(bad)


def test_rows_of_training_videos_leave_other_classes_out_or_call_them_background():
    """foreground_rows: a row is foreground inside an instance of a training class; rows of another class's
    instance are not kept (the protocol's training) or kept as background (strict training)."""
    from stale_cli.model.data.annotations import parse_annotations
    from stale_cli.model.data.dataset import VideoSet, foreground_rows
    from stale_cli.sidecar import FeatureMeta

    ann = parse_annotations({"database": {"v": {"subset": "train", "duration": 10.0, "annotations": [
        {"label": "high jump", "segment": [2.0, 4.0]}, {"label": "diving", "segment": [6.0, 8.0]}]}}})
    meta = FeatureMeta.of({"fps": 1.0, "timestamps": [float(k) for k in range(10)], "duration": 10.0})
    vs = VideoSet(list(ann.videos.values()), {"v": np.ones((10, 4), np.float16)}, {"v": meta})
    # row k is the snippet [k - 0.5, k + 0.5) s, centred at k s
    (feats, fg, keep), = foreground_rows(vs, ["high jump"], ignore_unseen=True)
    assert feats.shape == (10, 4)
    np.testing.assert_array_equal(np.flatnonzero(fg), [2, 3])
    np.testing.assert_array_equal(np.flatnonzero(~keep), [6, 7])
    (_, fg, keep), = foreground_rows(vs, ["high jump"], ignore_unseen=False)
    np.testing.assert_array_equal(np.flatnonzero(fg), [2, 3])
    assert keep.all()
