"""Shared fixtures: a tiny randomly initialised CLIP built by open_clip from a small config.

Nothing here touches the network: the model config is registered with open_clip from this file and the weights
are random (seeded), saved once per session so commands can load them with ``--clip-weights PATH``.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _text_cache(tmp_path_factory):
    """Detection's text-feature cache (stale_cli/textcache.py) in a temporary folder, not the user's ~/.cache."""
    os.environ["STALE_CACHE_DIR"] = str(tmp_path_factory.mktemp("stale-cache"))

@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: on 2 cores, more torch threads only contend (steps measured 10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_CLIP_NAME = "stale-tiny"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _register_tiny_clip(directory) -> None:
    import open_clip

    path = directory / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(path)


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory) -> str:
    """Name of the tiny open_clip architecture (registered with open_clip for this test session)."""
    _register_tiny_clip(tmp_path_factory.mktemp("clip_config"))
    return TINY_CLIP_NAME


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_name):
    """A seeded, randomly initialised tiny open_clip CLIP model in eval mode."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip_weights(tiny_clip, tmp_path_factory):
    """Path to the tiny CLIP's state dict, saved with torch.save (a "local weights file")."""
    import torch

    path = tmp_path_factory.mktemp("clip_weights") / "tiny_clip.pt"
    torch.save(tiny_clip.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Synthetic videos (made with PyAV; no binary is committed). Each frame carries its own number in its top half
# (left quarter: 16 * (i // 16) + 8 grey, right quarter: 16 * (i % 16) + 8 grey), so a test can read back which
# frame a decoder delivered; the bottom half shows a moving square over a background whose colour changes at the
# cut times ("scenes").

VIDEO_W, VIDEO_H = 96, 64
SCENE_COLOURS = [(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 200, 40)]


def draw_frame(i: int, t: float, cuts=()):
    import numpy as np

    img = np.zeros((VIDEO_H, VIDEO_W, 3), np.uint8)
    half_h, half_w = VIDEO_H // 2, VIDEO_W // 2
    img[:half_h, :half_w] = 16 * ((i // 16) % 16) + 8
    img[:half_h, half_w:] = 16 * (i % 16) + 8
    scene = sum(1 for c in cuts if t >= c)
    img[half_h:] = SCENE_COLOURS[scene % len(SCENE_COLOURS)]
    x = int(4 * i) % (VIDEO_W - 12)
    img[half_h + 8 : half_h + 20, x : x + 12] = 255
    return img


def read_frame_number(img) -> int:
    """Inverse of draw_frame's code on a decoded (H, W, 3) uint8 frame of the original size."""
    half_h, half_w = VIDEO_H // 2, VIDEO_W // 2
    hi = float(img[half_h // 4 : 3 * half_h // 4, half_w // 4 : 3 * half_w // 4].mean())
    lo = float(img[half_h // 4 : 3 * half_h // 4, half_w + half_w // 4 : half_w + 3 * half_w // 4].mean())
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


def make_video(path, frame_times, time_base, rate=None, codec="mpeg4", cuts=()):
    """Write a video whose frame i has presentation time frame_times[i] (seconds, exact multiples of time_base)."""
    from fractions import Fraction

    import av

    time_base = Fraction(time_base)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate or Fraction(25))
        stream.width, stream.height, stream.pix_fmt = VIDEO_W, VIDEO_H, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "mpeg4":
            stream.codec_context.qmax = 4  # flat grey codes must survive compression
        elif codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for i, t in enumerate(frame_times):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, t, cuts), format="rgb24")
            frame.pts = int(round(Fraction(t) / time_base)) if not isinstance(t, Fraction) else int(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """Paths of the synthetic videos plus the exact presentation times of their frames (seconds from frame 0)."""
    from fractions import Fraction

    d = tmp_path_factory.mktemp("videos")
    ntsc = Fraction(1001, 30000)
    vfr_times = [Fraction(0)]
    for i in range(1, 40):  # 10 fps, then 25 fps, then 5 fps, in milliseconds
        vfr_times.append(vfr_times[-1] + Fraction(100 if i < 10 else 40 if i < 30 else 200, 1000))
    start = Fraction(3, 2)  # a stream that starts at 1.5 s
    v = {
        "cfr25": (make_video(d / "cfr25.mp4", [Fraction(i, 25) for i in range(100)], Fraction(1, 25),
                             cuts=(1.0, 2.5)), [Fraction(i, 25) for i in range(100)], Fraction(4)),
        "ntsc": (make_video(d / "ntsc.mp4", [i * ntsc for i in range(90)], ntsc, rate=Fraction(30000, 1001),
                            codec="libx264"), [i * ntsc for i in range(90)], Fraction(3003, 1000)),
        # the last frame's display duration is the muxer's choice: "duration" None = not known exactly
        "vfr": (make_video(d / "vfr.mkv", vfr_times, Fraction(1, 1000), codec="libx264"), vfr_times, None),
        "late": (make_video(d / "late.mkv", [start + Fraction(i, 25) for i in range(50)], Fraction(1, 1000)),
                 [Fraction(i, 25) for i in range(50)], Fraction(2)),
        "single": (make_video(d / "single.mp4", [Fraction(0)], Fraction(1, 25)), [Fraction(0)], Fraction(1, 25)),
    }
    return {
        name: {"path": p, "times": [float(t) for t in ts], "duration": None if dur is None else float(dur)}
        for name, (p, ts, dur) in v.items()
    }


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, videos):
    """Damaged and non-video files.

    truncated.mkv: first half of a 10 s Matroska video (frames 0..~120 decodable); no_frames.mp4: first 40% of an
    MP4 whose index (moov) is at the end, so nothing is decodable; garbage.mp4: random bytes; notes.txt: text.
    """
    from fractions import Fraction

    d = tmp_path_factory.mktemp("bad")
    whole = make_video(d / "whole.mkv", [Fraction(i, 25) for i in range(250)], Fraction(1, 1000))
    data = whole.read_bytes()
    (d / "truncated.mkv").write_bytes(data[: len(data) // 2])
    whole.unlink()
    data = videos["cfr25"]["path"].read_bytes()
    (d / "no_frames.mp4").write_bytes(data[: int(len(data) * 0.4)])
    (d / "garbage.mp4").write_bytes(bytes(range(256)) * 64)
    (d / "notes.txt").write_text("not a video\n")
    return {
        "truncated": d / "truncated.mkv",
        "no_frames": d / "no_frames.mp4",
        "garbage": d / "garbage.mp4",
        "text": d / "notes.txt",
    }


@pytest.fixture
def run(tiny_clip_name, tiny_clip_weights):
    """``run(command, *args, clip=True)``: the command through CliRunner, asserting it raised nothing."""
    from typer.testing import CliRunner

    from stale_cli.cli import app

    def invoke(command, *args, clip=True):
        extra = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights)] if clip else []
        r = CliRunner().invoke(app, [command, *map(str, args), *extra])
        assert "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        return r
    return invoke


# ---------------------------------------------------------------------------------------------------------------
# Feature files for commands that read them (their contents: tests/feature_files.py).


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory, tiny_clip_name, tiny_clip_weights):
    """A folder holding game.npy (and its sidecar): features whose answer is known (feature_files.TRUTH)."""
    from stale_cli.detection.clipmode import class_text_features
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.sidecar import write_features

    from feature_files import CLASSES, constructed_features

    clip = load_clip(tiny_clip_name, str(tiny_clip_weights))
    feats, meta = constructed_features(class_text_features(clip, CLASSES))
    d = tmp_path_factory.mktemp("cli_feats")
    write_features(d / "game.npy", feats, meta)
    return d


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tiny_clip, tiny_clip_name):
    """A small, valid STALE checkpoint (tests/crafted_checkpoints.py) that the crafted ones are made from."""
    from crafted_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt", tiny_clip, tiny_clip_name)


@pytest.fixture
def feats(tmp_path, tiny_clip_name, tiny_clip_weights):
    """tmp_path/feats holding v0.npy, v1.npy and v2.npy (with sidecars): features whose answer is known
    (feature_files.constructed_features, seeds 0, 1, 2)."""
    from stale_cli.detection.clipmode import class_text_features
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.sidecar import write_features

    from feature_files import CLASSES, constructed_features

    text = class_text_features(load_clip(tiny_clip_name, str(tiny_clip_weights)), CLASSES)
    d = tmp_path / "feats"
    for i in range(3):
        f, meta = constructed_features(text, seed=i)
        write_features(d / f"v{i}.npy", f, meta)
    return d


@pytest.fixture
def random_feats(tmp_path):
    """tmp_path/feats holding v0.npy and v1.npy (with sidecars): random features (feature_files.features)."""
    from stale_cli.sidecar import write_features

    from feature_files import features

    d = tmp_path / "feats"
    for i in range(2):
        write_features(d / f"v{i}.npy", *features(seed=i))
    return d


@pytest.fixture
def extract(tiny_clip_name, tiny_clip_weights):
    """``extract(*args)``: ``stale extract-features ARGS --fps 2`` with the tiny CLIP through CliRunner, asserting
    it printed no traceback."""
    from typer.testing import CliRunner

    from stale_cli.cli import app

    def invoke(*args):
        r = CliRunner().invoke(app, ["extract-features", *map(str, args), "--fps", "2", "--clip-model", tiny_clip_name,
                                     "--clip-weights", str(tiny_clip_weights), "--no-progress"])
        assert "Traceback" not in r.output, r.output
        return r

    return invoke
