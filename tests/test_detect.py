"""Detection (stale_cli/detection/detect.py) in the training-free mode, on synthetic features whose answer is known:
segments found and centred on the action frames, names that never happen scoring low; the mode chosen from a weights
folder (only STALE checkpoints count); resampling features; a batch goes on past an input that needs more memory than
there is. The trained mode is in test_detect_stale_mode.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stale_cli.detection.clipmode import class_text_features, gaussian_smooth, snippet_probabilities
from stale_cli.detection.detect import CLIP_MODE, STALE_MODE, DetectSettings, Detector, choose_mode, resample_features
from stale_cli.errors import CheckpointError, InputError
from stale_cli.sidecar import FeatureMeta

from feature_files import CLASSES, DURATION, FPS, TRUTH, constructed_features  # tests/ is on sys.path


@pytest.fixture(scope="module")
def clip(tiny_clip_name, tiny_clip_weights):
    from stale_cli.features.clip_backbone import load_clip

    return load_clip(tiny_clip_name, str(tiny_clip_weights))


def best_per_label(segments):
    best = {}
    for s in segments:
        if s.label not in best or s.score > best[s.label].score:
            best[s.label] = s
    return best


def test_clip_mode_finds_constructed_segments(clip, tmp_path, tiny_clip_name):
    settings = DetectSettings(classes=CLASSES, mode=None, clip_model=tiny_clip_name, weights_dir=tmp_path)
    det = Detector(settings, clip=clip)
    assert det.mode == CLIP_MODE and det.metadata()["mode"] == "clip"
    feats, meta = constructed_features(det.text[: len(CLASSES)])
    video = det.detect_features(feats, meta, video_id="v", source="synthetic")
    best = best_per_label(video.segments)
    assert set(best) == set(CLASSES)
    for name, (s, e) in TRUTH.items():
        seg = best[name]
        # Rows are frames at k / fps: the frames inside [s, e) are s .. e - 1/fps, whose snippets span
        # [s - row/2, e - row/2]. Either edge may be one row off: the smoothed curve's half-height falls between two
        # rows and the noise picks the side (the centring itself is checked at 4 fps, below, by
        # test_training_free_segments_are_centred_on_the_action_frames).
        row = 1 / FPS
        assert abs(seg.start - (s - row / 2)) <= row + 1e-6 and abs(seg.end - (e - row / 2)) <= row + 1e-6, seg
        assert seg.score > 0.5
    # Whatever else is reported scores far below the true segments.
    others = [s for s in video.segments if s not in best.values()]
    assert all(s.score < 0.6 * min(b.score for b in best.values()) for s in others)
    assert video.scores.shape == (feats.shape[0], 2) and video.times.shape == (feats.shape[0],)
    assert all(0.0 <= s.start < s.end <= DURATION for s in video.segments)


def test_snippet_probabilities_background_and_shape(clip):
    text = class_text_features(clip, CLASSES)
    assert text.shape == (2, clip.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    feats, _ = constructed_features(text)
    probs = snippet_probabilities(feats, text, FPS)
    assert probs.shape == (feats.shape[0], 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert probs[int(15 * FPS), 0] > 0.9  # inside "high jump"
    assert probs[int(32 * FPS), 1] > 0.9  # inside "pole vault"
    outside = np.ones(len(probs), bool)
    for s, e in TRUTH.values():
        outside[int(s * FPS) : int(e * FPS)] = False
    bg_mean = probs[outside].mean(0)  # nothing like either class: background dominates on average
    assert bg_mean[2] > 0.5 and bg_mean[2] > 2 * bg_mean[:2].max()


def test_gaussian_smooth_keeps_constants_and_spreads_impulses():
    x = np.zeros((21, 2), np.float32)
    x[10, 0] = 1.0
    x[:, 1] = 3.0
    y = gaussian_smooth(x, 2.0)
    np.testing.assert_allclose(y[:, 1], 3.0, rtol=1e-6)
    assert y[10, 0] < 1.0 and y[8, 0] > 0 and abs(y[:, 0].sum() - 1.0) < 1e-4
    np.testing.assert_array_equal(gaussian_smooth(x[:1], 2.0), x[:1])  # one row: unchanged


def test_clip_mode_rejects_other_width_and_long_names(clip, tiny_clip_name, tmp_path):
    det = Detector(DetectSettings(classes=CLASSES, mode="clip", clip_model=tiny_clip_name), clip=clip)
    feats = np.ones((10, 512), np.float32)
    meta = {"fps": 1.0, "timestamps": list(range(10)), "duration": 10.0, "clip_model": tiny_clip_name}
    with pytest.raises(InputError, match="512-wide"):
        det.detect_features(feats, meta, "v", "v.npy")
    with pytest.raises(InputError, match="too long"):
        class_text_features(clip, ["jump " * 80])


def test_choose_mode(tmp_path):
    assert choose_mode(None, None, tmp_path) == (CLIP_MODE, None)
    with pytest.raises(CheckpointError, match="--mode stale needs"):
        choose_mode("stale", None, tmp_path)
    import torch

    torch.save({"format": "stale-checkpoint"}, tmp_path / "a.pt")  # only the format key is looked at here
    assert choose_mode(None, None, tmp_path) == (STALE_MODE, tmp_path / "a.pt")
    assert choose_mode("clip", None, tmp_path) == (CLIP_MODE, None)  # forced: weights/ ignored
    torch.save({"format": "stale-checkpoint"}, tmp_path / "b.pt")
    assert choose_mode(None, None, tmp_path) == (CLIP_MODE, None)  # two: ambiguous, training-free
    with pytest.raises(InputError, match="takes no --checkpoint"):
        choose_mode("clip", tmp_path / "a.pt", tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        choose_mode(None, tmp_path / "missing.pt", tmp_path)


def test_resample_features_linear():
    feats = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row k = k
    meta = {"fps": 4.0, "timestamps": [1.0 + k / 4 for k in range(8)], "duration": 3.0}
    out, m = resample_features(feats, FeatureMeta.from_json(meta), 2.0)
    assert out.shape == (4, 3) and m.fps == 2.0 and m.resampled_from_fps == 4.0
    np.testing.assert_allclose(out[:, 0], [0, 2, 4, 6])
    np.testing.assert_allclose(m.timestamps, [1.0, 1.5, 2.0, 2.5])
    up, _ = resample_features(feats, FeatureMeta.from_json(meta), 8.0)
    assert up.shape == (16, 3)
    np.testing.assert_allclose(up[:3, 0], [0, 0.5, 1.0])


def test_clip_mode_one_wrong_name_and_absent_action_score_low(clip, tiny_clip_name):
    """Asked "pole vault" alone on a video where only "high jump" happens (10-20 s), or on a video of no action at
    all, no detection reaches a score a user would trust; asked "high jump", the action is found."""
    det = Detector(DetectSettings(classes=CLASSES, mode="clip", clip_model=tiny_clip_name), clip=clip)
    text = det.text[: len(CLASSES)]
    feats, meta = constructed_features(text)
    only_jump = feats.copy()
    s, e = TRUTH["pole vault"]
    only_jump[int(s * FPS) : int(e * FPS)] -= 7.0 * 0.4 * text[1]  # remove the pole vault instance
    ask = lambda name, x: Detector(DetectSettings(classes=[name], mode="clip", clip_model=tiny_clip_name),  # noqa: E731
                                   clip=clip).detect_features(x, meta, "v", "v")
    assert max((seg.score for seg in ask("pole vault", only_jump).segments), default=0.0) < 0.3
    nothing, _ = constructed_features(text)
    for name, (s, e) in TRUTH.items():
        nothing[int(s * FPS) : int(e * FPS)] -= 7.0 * 0.4 * text[CLASSES.index(name)]
    assert max((seg.score for seg in ask("high jump", nothing).segments), default=0.0) < 0.3
    best = max(ask("high jump", only_jump).segments, key=lambda seg: seg.score)
    assert best.score > 0.3 and abs(best.start - 10.0) <= 1.0 and abs(best.end - 20.0) <= 1.0


def test_training_free_segments_are_centred_on_the_action_frames(tiny_clip_name, tiny_clip_weights):
    """Frames 20-39 of 80 (at 4 fps: 5.0 .. 9.75 s) show the action: the segment is centred on them, not late."""
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.features.clip_backbone import load_clip

    fps, rows = 4.0, 80
    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    det = Detector(DetectSettings(classes=["a dog", "a cat"], mode="clip", clip_model=tiny_clip_name,
                                  distractors=False), clip=clip)  # about where segments sit, not which name wins
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.02, size=(rows, det.text.shape[1]))
    feats[:, 0] += 1.0  # the scene
    feats[20:40] += 0.6 * det.text[0]
    meta = {"fps": fps, "timestamps": [k / fps for k in range(rows)], "duration": rows / fps}
    video = det.detect_features(feats.astype(np.float32), meta, "v", "synthetic")
    best = max((s for s in video.segments if s.label == "a dog"), key=lambda s: s.score)
    first, last = 20 / fps, 39 / fps
    assert (best.start + best.end) / 2 == pytest.approx((first + last) / 2, abs=0.02), best
    assert best.end - best.start > 0.7 * (last - first)  # smoothing takes about a row off either side
    np.testing.assert_allclose(video.times, meta["timestamps"])  # the plot's curves sit on the frames too


def test_memory_error_on_one_input_of_a_batch_is_one_failure(tmp_path):
    from stale_cli.detection.detect import detect_batch
    from stale_cli.detection.detections import VideoDetections

    class Detector:  # stands in for stale_cli.detection.detect.Detector: two inputs need more memory than there is
        def detect(self, path, video_id, progress=None):
            if path.name == "big.npy":
                raise MemoryError("Unable to allocate 7.63 GiB for an array with shape (4000000, 512)")
            if path.name == "long.npy":  # the model's windows, in torch's CPU allocator
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 68719476736 bytes.")
            if path.name == "bug.npy":
                raise RuntimeError("shape mismatch")  # not memory: a bug, not to be hidden
            return VideoDetections(video_id=video_id, source=str(path), duration=1.0, segments=[])

    results, errors = [], []
    paths = [tmp_path / "big.npy", tmp_path / "long.npy", tmp_path / "small.npy"]
    failures = detect_batch(Detector(), paths, results.append, errors.append, ids=["big", "long", "small"])
    assert [f.path.name for f in failures] == ["big.npy", "long.npy"] and [v.video_id for v in results] == ["small"]
    assert "out of memory (Unable to allocate 7.63 GiB" in errors[0].message
    assert "DefaultCPUAllocator: can't allocate memory" in errors[1].message
    with pytest.raises(RuntimeError, match="shape mismatch"):
        detect_batch(Detector(), [tmp_path / "bug.npy"], results.append, errors.append, ids=["bug"])


def test_weights_folder_counts_only_stale_checkpoints(tmp_path, caplog):
    import torch

    from stale_cli.detection.detect import CLIP_MODE, STALE_MODE, choose_mode

    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)},
               tmp_path / "resnet50.pth")  # a plain state dict, as torchvision saves
    (tmp_path / "notes.pt").write_bytes(b"not even a zip")
    with caplog.at_level(logging.DEBUG, logger="stale_cli"):
        assert choose_mode(None, None, tmp_path) == (CLIP_MODE, None)
    ignored = [r.getMessage() for r in caplog.records if "not a stale checkpoint; ignored" in r.getMessage()]
    assert len(ignored) == 2 and all(r.levelno == logging.DEBUG for r in caplog.records if "ignored" in r.getMessage())
    torch.save({"format": "stale-checkpoint", "version": 1}, tmp_path / "th75_0.pt")
    assert choose_mode(None, None, tmp_path) == (STALE_MODE, tmp_path / "th75_0.pt")
