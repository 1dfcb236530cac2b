"""Detection (stale_cli/detection/detect.py) with a trained STALE checkpoint: a tiny STALE trained (with
stale_cli.model.train) finds its training segments through the detection library and through
``stale detect --checkpoint``, also on resampled features; names outside the checkpoint's vocabulary; checkpoints that
do not fit are refused clearly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stale_cli.detection.detect import STALE_MODE, DetectSettings, Detector
from stale_cli.errors import CheckpointError
from stale_cli.model.postprocess import DetectConfig
from stale_cli.sidecar import write_features

from feature_files import CLASSES, FPS  # tests/ is on sys.path


N_ROWS = 48  # 24 s per video


# Each video: (class, start_s, end_s) instances; the rest is background.
VIDEOS = {
    "v0": [("high jump", 3.0, 9.0), ("pole vault", 14.0, 19.0)],
    "v1": [("pole vault", 2.0, 8.0), ("high jump", 15.0, 21.0)],
    "v2": [("high jump", 8.0, 15.0)],
    "v3": [("pole vault", 10.0, 16.0)],
}


def synthetic_features(instances, rng, protos) -> np.ndarray:
    feats = protos[-1] + 0.1 * rng.normal(size=(N_ROWS, protos.shape[1]))  # background prototype + noise
    for name, s, e in instances:
        feats[int(s * FPS) : int(e * FPS)] = protos[CLASSES.index(name)] + 0.1 * rng.normal(
            size=(int(e * FPS) - int(s * FPS), protos.shape[1]))
    return feats.astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip, tiny_clip_name):
    """(features dir, checkpoint path) of a tiny STALE trained to overfit VIDEOS."""
    from dataclasses import replace

    from stale_cli.model.config import ModelConfig
    from stale_cli.model.data.annotations import parse_annotations
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("stale_trained")
    rng = np.random.default_rng(0)
    D = 32
    protos = rng.normal(size=(3, D))  # high jump, pole vault, background
    database = {}
    for vid, inst in VIDEOS.items():
        meta = {"fps": FPS, "timestamps": [k / FPS for k in range(N_ROWS)], "duration": N_ROWS / FPS,
                "source": f"{vid}.mp4", "clip_model": tiny_clip_name, "clip_weights": "random", "num_frames": N_ROWS}
        write_features(root / "feats" / f"{vid}.npy", synthetic_features(inst, rng, protos), meta)
        database[vid] = {"subset": "train", "duration": N_ROWS / FPS,
                         "annotations": [{"label": n, "segment": [s, e]} for n, s, e in inst]}
    ann = parse_annotations({"database": database})
    cfg = ModelConfig(encoder_layers=1, num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1)
    out = root / "tiny.pt"
    train(root / "feats", ann, CLASSES, out, tiny_clip, tiny_clip_name, model_cfg=cfg,
          data_cfg=DataConfig(mode="window", num_snippets=48, overlap=0.0, empty_window_keep=1.0),
          train_cfg=replace(TrainConfig(), epochs=30, lr=3e-3, batch_size=1, val_fraction=0.0), progress=False)
    return root, out


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, tiny_clip, tiny_clip_name):
    """A checkpoint of an untrained tiny STALE (32-wide stale-tiny features at 2 fps): for the misfit checks."""
    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=32, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1)
    path = tmp_path_factory.mktemp("stale_untrained") / "untrained.pt"
    save_checkpoint(path, STALE(cfg, tiny_clip), cfg, LossConfig(), DataConfig(num_snippets=32), CLASSES, FPS,
                    tiny_clip_name)
    return path


def tiou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


# The tiny model's prototypes are unrelated to any text: what it knows of its two names it memorised, so the
# localisation tests ask its own names with no distractors and no frozen-CLIP prior (the tiny CLIP reads nothing).
CLOSED = dict(distractors=False, prior_weight=0.0)


def test_tiny_stale_recovers_training_segments(trained):
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    det = Detector(DetectSettings(classes=CLASSES, checkpoint=ckpt, **CLOSED))
    assert det.mode == STALE_MODE and det.metadata()["checkpoint"] == str(ckpt)
    hits = total = 0
    for vid, inst in VIDEOS.items():
        feats, meta = read_features(root / "feats" / f"{vid}.npy")
        video = det.detect_features(feats, meta, vid, vid)
        assert video.segments and all(0 <= s.start < s.end <= N_ROWS / FPS for s in video.segments)
        for name, s, e in inst:
            total += 1
            top = [seg for seg in sorted(video.segments, key=lambda x: -x.score) if seg.label == name][:3]
            hits += any(tiou((seg.start, seg.end), (s, e)) >= 0.5 for seg in top)
    assert hits >= total - 1, f"{hits}/{total} training instances recovered"


def test_resampled_features_still_detect(trained):
    """Features at twice the checkpoint's rate are resampled to it (and give the same kind of answer)."""
    from stale_cli.detection.detect import resample_features
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    det = Detector(DetectSettings(classes=CLASSES, checkpoint=ckpt, **CLOSED))
    feats, meta = read_features(root / "feats" / "v2.npy")
    fast, fast_meta = resample_features(feats, meta, 2 * FPS)
    fast_meta = fast_meta.replace(duration=meta.duration)
    video = det.detect_features(fast, fast_meta, "v2", "v2")
    best = max((s for s in video.segments if s.label == "high jump"), key=lambda s: s.score)
    assert tiou((best.start, best.end), (8.0, 15.0)) >= 0.5


def test_checkpoint_misfits_are_refused(untrained, tmp_path):
    import torch

    ckpt = untrained
    det = Detector(DetectSettings(classes=CLASSES, checkpoint=ckpt))
    meta = {"fps": FPS, "timestamps": [0.0], "duration": 10.0, "clip_model": "stale-tiny"}
    with pytest.raises(CheckpointError, match="64-wide.*32-wide"):
        det.detect_features(np.zeros((20, 64), np.float32), meta, "w", "w.npy")
    with pytest.raises(CheckpointError, match="ViT-B-16"):
        det.detect_features(np.zeros((20, 32), np.float32), dict(meta, clip_model="ViT-B-16"), "w", "w.npy")
    raw = torch.load(ckpt, weights_only=True)
    raw["version"] = 999
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version"):
        Detector(DetectSettings(classes=CLASSES, checkpoint=tmp_path / "future.pt"))
    (tmp_path / "junk.pt").write_text(json.dumps({"not": "a checkpoint"}))
    with pytest.raises(CheckpointError, match="not a stale checkpoint"):
        Detector(DetectSettings(classes=CLASSES, checkpoint=tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="--clip-model"):
        Detector(DetectSettings(classes=CLASSES, checkpoint=ckpt, clip_model="ViT-B-32"))


def test_trained_mode_hands_its_class_curves_to_the_html_report(trained, tmp_path):
    """`stale detect --checkpoint ... --html`: the page gets the model's per-row class probabilities, one lane each."""
    import base64

    from typer.testing import CliRunner

    from stale_cli.cli import app
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    feats, meta = read_features(root / "feats" / "v2.npy")
    video = Detector(DetectSettings(classes=CLASSES, checkpoint=ckpt, **CLOSED)).detect_features(feats, meta, "v2", "v2")
    assert video.scores.shape == (N_ROWS, 2) and video.times.shape == (N_ROWS,)
    assert 0.0 <= video.scores.min() and video.scores.max() <= 1.0

    r = CliRunner().invoke(app, ["detect", str(root / "feats" / "v2.npy"), "--classes", ",".join(CLASSES),
                                 "--checkpoint", str(ckpt), "--html", str(tmp_path / "r.html"), "--no-progress",
                                 "--no-distractors", "--prior-weight", "0"])
    assert r.exit_code == 0, r.output
    doc = (tmp_path / "r.html").read_text()
    assert "trained STALE checkpoint" in doc and str(ckpt) in doc and doc.count('class="lane"') == len(CLASSES)
    tag = '<script type="application/json" class="video-data">'
    start = doc.index(tag) + len(tag)
    data = json.loads(doc[start : doc.index("</script>", start)])
    curves = data["curves"]
    # The curve's samples sit on the frames' times (row k is the frame at k / FPS), like the segments.
    assert curves["t0"] == pytest.approx(0.0) and curves["step"] == pytest.approx(0.5)
    high_jump = np.frombuffer(base64.b64decode(curves["values"][0]), np.uint8) / 255  # (N_ROWS,)
    np.testing.assert_allclose(high_jump, video.scores[:, 0], atol=0.5 / 255 + 1e-6)
    inside = np.arange(N_ROWS) / FPS
    inside = (inside > 8.0) & (inside < 15.0)
    assert high_jump[inside].mean() > high_jump[~inside].mean() + 0.3  # the curve shows where the action is


def test_one_name_that_never_happens_gets_no_trusted_detection(trained, monkeypatch):
    """Asked "high jump" alone on a video of pole vault only: the snippets go to the checkpoint's own name "pole
    vault" (a distractor now), not to the only name asked. (The generic names are left out: in the tiny CLIP's
    32 dimensions 200 random name vectors crowd out the two this model memorised.)"""
    from stale_cli import vocab
    from stale_cli.sidecar import read_features

    monkeypatch.setattr(vocab, "generic_action_names", lambda: [])
    root, ckpt = trained
    feats, meta = read_features(root / "feats" / "v3.npy")  # pole vault 10-16 s, nothing else
    det = Detector(DetectSettings(classes=["high jump"], checkpoint=ckpt, prior_weight=0.0))
    assert "pole vault" in det.competitors and det.metadata()["distractors"] == len(det.competitors)
    video = det.detect_features(feats, meta, "v3", "v3")
    assert max((s.score for s in video.segments), default=0.0) < 0.3
    # the same name on a video where it happens still scores high
    feats, meta = read_features(root / "feats" / "v2.npy")  # high jump 8-15 s
    best = max(det.detect_features(feats, meta, "v2", "v2").segments, key=lambda s: s.score)
    assert best.score > 0.5 and tiou((best.start, best.end), (8.0, 15.0)) >= 0.5


def test_names_the_checkpoint_never_saw_are_scored_by_frozen_clip(trained):
    """--new-names both (default) and clip: a name outside the checkpoint's vocabulary goes through frozen CLIP's
    reading of the features, the checkpoint's own names through the model; --new-names stale sends both to the
    model."""
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    det = Detector(DetectSettings(classes=["high jump", "skateboarding"], checkpoint=ckpt))
    assert det.new_idx == [1] and det.metadata()["scored_by_frozen_clip"] == ["skateboarding"]
    feats, meta = read_features(root / "feats" / "v2.npy")
    video = det.detect_features(feats, meta, "v2", "v2")
    assert video.scores.shape == (N_ROWS, 2) and np.isfinite(video.scores).all()
    assert {s.label for s in video.segments} <= {"high jump", "skateboarding"}
    assert Detector(DetectSettings(classes=["high jump", "skateboarding"], checkpoint=ckpt,
                                   new_names="stale")).new_idx == []


def test_both_reading_is_the_noisy_or_of_clip_and_foreground(trained):
    """--new-names both (the default): a new name's curve is 1 - (1 - clip min(1, L_ctx / level)^g)(1 - foreground) of
    the two other readings' curves (g: DetectConfig.context_gate; level: L_ctx's mean on the training foreground,
    recorded in the checkpoint), and its segments come from the model's masks and from that
    whole-video curve; the checkpoint's own names are read as in every reading."""
    from stale_cli.model.data.windows import center_video
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    feats, meta = read_features(root / "feats" / "v2.npy")  # high jump 8-15 s

    def read(**kw):
        det = Detector(DetectSettings(classes=["high jump", "skateboarding"], checkpoint=ckpt, distractors=False, **kw))
        return det, det.detect_features(feats, meta, "v2", "v2")

    det, both = read()
    assert det.settings.new_names == "both" and det.new_idx == [1]
    _, clip = read(new_names="clip")
    _, fg = read(new_names="foreground")
    context = det.info.context_foreground
    l_ctx = context.probabilities(center_video(feats, det.data_cfg.video_mean))  # (N,)
    assert context.level is not None  # L_ctx is read relative to its level on the training foreground
    relative = np.minimum(1.0, l_ctx / context.level)
    assert (relative == 1.0).any() and (relative < 1.0).any()
    weighed = clip.scores[:, 1] * relative ** det.detect_cfg.context_gate
    assert (weighed < clip.scores[:, 1] - 0.05).any()  # on the edges of frozen CLIP's run, which L_ctx leaves out
    np.testing.assert_allclose(both.scores[:, 1], 1 - (1 - weighed) * (1 - fg.scores[:, 1]), atol=1e-5)
    np.testing.assert_allclose(both.scores[:, 0], clip.scores[:, 0], atol=1e-6)
    assert (both.scores[:, 1] >= np.maximum(weighed, fg.scores[:, 1]) - 1e-6).all()
    assert {s.label for s in both.segments} <= {"high jump", "skateboarding"}
    own = lambda video: [(s.start, s.end, round(s.score, 5)) for s in video.segments if s.label == "high jump"]  # noqa: E731
    assert own(both) == own(clip)


def test_both_reading_keeps_frozen_clips_curve_on_rows_resize_mode_skips(tmp_path, tiny_clip, tiny_clip_name, trained):
    """A resize-mode checkpoint (ActivityNet's preset) samples a video at fewer snippets than it has feature rows;
    the "both" curve of a new name still covers every row, at least frozen CLIP's own reading there."""
    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE
    from stale_cli.sidecar import read_features

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1)
    ckpt = tmp_path / "resize.pt"
    save_checkpoint(ckpt, STALE(cfg, tiny_clip), cfg, LossConfig(), DataConfig(mode="resize", num_snippets=16), CLASSES,
                    FPS, tiny_clip_name)
    feats, meta = read_features(trained[0] / "feats" / "v2.npy")  # 48 rows, 16 snippets

    def curve(reading):
        det = Detector(DetectSettings(classes=["high jump", "skateboarding"], checkpoint=ckpt, new_names=reading,
                                      distractors=False))
        return det.detect_features(feats, meta, "v2", "v2").scores[:, 1]

    both, clip = curve("both"), curve("clip")
    assert (clip > 0.01).sum() > 16  # frozen CLIP reads the name on more rows than the model's snippets cover
    assert (both >= clip - 1e-6).all()


def test_a_new_name_asked_alone_is_found_where_it_happens_and_nowhere_else(trained, tiny_clip_name):
    """The default reading, one name the checkpoint never saw (K = 1, distractors on): a video whose snippets at
    8-15 s look like the name's text to frozen CLIP gives a trusted segment there; the checkpoint's own videos,
    where it never happens (only its training classes), give none at 0.5."""
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    det = Detector(DetectSettings(classes=["skateboarding"], checkpoint=ckpt))
    assert det.new_idx == [0] and det.settings.new_names == "both"
    rng = np.random.default_rng(3)
    text = det.prior_text[0]  # frozen CLIP's text of the name (the asked names' rows come first)
    feats = 0.1 * rng.normal(size=(N_ROWS, 32))  # a featureless scene
    feats[16:30] = text + 0.02 * rng.normal(size=(14, 32))  # 8-15 s: what frozen CLIP reads as the name
    meta = {"fps": FPS, "timestamps": [k / FPS for k in range(N_ROWS)], "duration": N_ROWS / FPS,
            "source": "skate.mp4", "clip_model": tiny_clip_name, "clip_weights": "random", "num_frames": N_ROWS}
    write_features(root / "skate.npy", feats.astype(np.float32), meta)
    found = det.detect_features(*read_features(root / "skate.npy"), "skate", "skate").segments
    best = max(found, key=lambda s: s.score)
    assert best.score >= 0.5 and tiou((best.start, best.end), (8.0, 15.0)) >= 0.5
    for vid in VIDEOS:
        video = det.detect_features(*read_features(root / "feats" / f"{vid}.npy"), vid, vid)
        assert max((s.score for s in video.segments), default=0.0) < 0.5, vid


def test_foreground_reading_takes_frozen_clips_class_and_the_models_where(trained):
    """--new-names foreground: a new name's curve is the model's with frozen CLIP's class posterior alone (prior
    weight 1), as --new-names stale --prior-weight 1 gives it (the context foreground, the next test, adds nothing
    on this video: L_ctx does not exceed L_hat on it); the checkpoint's own names are read as before."""
    from stale_cli.errors import InputError
    from stale_cli.sidecar import read_features

    root, ckpt = trained
    feats, meta = read_features(root / "feats" / "v2.npy")

    def read(classes, **kw):
        det = Detector(DetectSettings(classes=classes, checkpoint=ckpt, **kw))
        return det, det.detect_features(feats, meta, "v2", "v2")

    det, both = read(["high jump", "skateboarding"], new_names="foreground")
    assert det.new_idx == [1] and det.metadata()["new_names"] == "foreground"
    _, alone = read(["skateboarding"], new_names="stale", prior_weight=1.0)
    _, own = read(["high jump", "skateboarding"], new_names="stale")
    np.testing.assert_allclose(both.scores[:, 1], alone.scores[:, 0], atol=1e-5)
    np.testing.assert_allclose(both.scores[:, 0], own.scores[:, 0], atol=1e-5)
    assert np.abs(both.scores[:, 1] - own.scores[:, 1]).max() > 1e-3  # the prior weight does differ
    assert {s.label for s in both.segments} <= {"high jump", "skateboarding"}
    with pytest.raises(InputError, match="--new-names must be one of both, clip, foreground, stale"):
        Detector(DetectSettings(classes=["high jump"], checkpoint=ckpt, new_names="frozen"))


def with_context(src, dst, weights, level=None):
    """A copy of checkpoint ``src`` at ``dst`` whose L_ctx has ``weights`` (None: no L_ctx, as before it existed) and
    ``level`` (None: none recorded, as before it was)."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt.pop("context_foreground", None)
    if weights is not None:
        ckpt["context_foreground"] = {"inputs": ["distance_to_median", "distance_to_mean", "bias"],
                                      "weights": list(weights)}
        if level is not None:
            ckpt["context_foreground"]["foreground_level"] = level
    torch.save(ckpt, dst)
    return dst


def test_training_records_the_context_foreground(trained):
    """`stale train` stores L_ctx fitted on its training videos' rows (what benchmarks/zero_shot_context.py adds to
    older checkpoints is the same fit)."""
    from stale_cli.model.checkpoint import read_checkpoint
    from stale_cli.model.context import fit_context_foreground
    from stale_cli.model.data.annotations import parse_annotations
    from stale_cli.model.data.dataset import foreground_rows, load_video_set

    root, ckpt = trained
    _, info = read_checkpoint(ckpt)
    assert info.context_foreground is not None
    ann = parse_annotations({"database": {vid: {"subset": "train", "duration": N_ROWS / FPS, "annotations": [
        {"label": n, "segment": [s, e]} for n, s, e in inst]} for vid, inst in VIDEOS.items()}})
    vs = load_video_set(root / "feats", list(ann.videos.values()), info.data_config)
    refit = fit_context_foreground(foreground_rows(vs, list(info.class_names)))
    np.testing.assert_allclose(info.context_foreground.weights, refit.weights, rtol=1e-6)
    assert info.context_foreground.level == pytest.approx(refit.level, rel=1e-6)
    assert info.context_foreground.weights[0] > 0


def test_a_new_names_foreground_is_the_larger_of_l_hat_and_l_ctx(trained, tmp_path, tiny_clip_name):
    """The foreground and both readings give a new name max(L_hat, L_ctx) as its foreground: with L_ctx = 0 the
    curve is the one of a checkpoint without L_ctx, with L_ctx = 1 it is at least as high, and higher on the
    snippets that frozen CLIP reads as the name but the model's L_hat, trained on two other classes, does not
    call foreground; the checkpoint's own names never read L_ctx. "both" also weighs frozen CLIP's curve by
    L_ctx ** context_gate (none of it where L_ctx is 0; all of it with the gate off). A damaged record is one
    clear error."""
    root, ckpt = trained

    def detector(weights, reading="foreground", level=None, **kw):
        path = with_context(ckpt, tmp_path / f"ctx{len(list(tmp_path.iterdir()))}.pt", weights, level)
        return Detector(DetectSettings(classes=["high jump", "skateboarding"], checkpoint=path, new_names=reading,
                                       distractors=False, **kw))

    rng = np.random.default_rng(3)
    feats = 0.1 * rng.normal(size=(N_ROWS, 32))  # a featureless scene
    feats[16:30] = detector(None).prior_text[1] + 0.02 * rng.normal(size=(14, 32))  # 8-15 s: frozen CLIP's name
    meta = {"fps": FPS, "timestamps": [k / FPS for k in range(N_ROWS)], "duration": N_ROWS / FPS,
            "source": "skate.mp4", "clip_model": tiny_clip_name, "clip_weights": "random", "num_frames": N_ROWS}
    feats = feats.astype(np.float32)

    def read(weights, reading="foreground", level=None, **kw):
        return detector(weights, reading, level, **kw).detect_features(feats, meta, "skate", "skate").scores

    none, zero, one = read(None), read((0.0, 0.0, -50.0)), read((0.0, 0.0, 50.0))
    np.testing.assert_allclose(zero, none, atol=1e-6)
    np.testing.assert_allclose(one[:, 0], none[:, 0], atol=1e-6)
    assert (one[:, 1] >= none[:, 1] - 1e-6).all()
    assert one[16:30, 1].mean() > 0.9 and one[16:30, 1].mean() > none[16:30, 1].mean() + 0.1
    both_one, both_none = read((0.0, 0.0, 50.0), "both"), read(None, "both")
    assert (both_one[:, 1] >= both_none[:, 1] - 1e-6).all() and (both_one[:, 1] - both_none[:, 1]).max() > 0.05
    np.testing.assert_allclose(read((0.0, 0.0, 50.0), "stale"), read(None, "stale"), atol=1e-6)  # the model alone
    # "both" weighs frozen CLIP's curve by L_ctx ** context_gate: where L_ctx is 0 only the model's reading is left
    np.testing.assert_allclose(read((0.0, 0.0, -50.0), "both")[:, 1], zero[:, 1], atol=1e-6)
    assert both_none[16:30, 1].mean() > zero[16:30, 1].mean() + 0.1  # frozen CLIP did add to it
    ungated = read((0.0, 0.0, -50.0), "both", detect_config=DetectConfig(context_gate=0.0))
    np.testing.assert_allclose(ungated, both_none, atol=1e-6)
    # L_ctx is read relative to its recorded level: at the level (here L_ctx = sigmoid(-1.5) everywhere) or above
    # it, frozen CLIP keeps its whole evidence; at half the level, 0.5 ** g of it, more than L_ctx ** g
    low = 1.0 / (1.0 + math.exp(1.5))
    np.testing.assert_allclose(read((0.0, 0.0, -1.5), "both", level=low)[:, 1], both_none[:, 1], atol=1e-5)
    np.testing.assert_allclose(read((0.0, 0.0, -1.5), "both", level=low / 2)[:, 1], both_none[:, 1], atol=1e-5)
    raw = read((0.0, 0.0, -1.5), "both")  # no level recorded: L_ctx as it is, as before levels were recorded
    halved = read((0.0, 0.0, -1.5), "both", level=2 * low)
    assert raw[16:30, 1].mean() < halved[16:30, 1].mean() - 0.01 < both_none[16:30, 1].mean() - 0.02
    with pytest.raises(CheckpointError, match="context_foreground must be 3 finite weights"):
        read((0.0, float("nan"), 1.0))
