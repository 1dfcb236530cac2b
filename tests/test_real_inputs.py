"""Issue 9, "videos as people have them": rotated phone videos, cover art, @lists with a bad line, linked folders.

The rotated and cover-art files are made here with PyAV (its ``set_display_rotation`` writes the display matrix a
phone writes; an attached picture is a video stream with the ``attached_pic`` disposition), so no binary is
committed and no ffmpeg program is needed.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import DecodeError
from stale_cli.inputs import collect_inputs
from stale_cli.video import FrameSampler

W, H = 96, 64  # coded (stored) size: landscape


def pattern() -> np.ndarray:
    """A frame no rotation or mirror maps onto another: a white top-left quadrant with a grey outer corner."""
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2, : W // 2] = 255
    img[: H // 4, : W // 4] = 128
    return img


def write_rotated(path, degrees: int, mirror: bool = False, frames: int = 10):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.qmax = 4
        stream.set_display_rotation(degrees, hflip=mirror)  # as a phone's display matrix
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_cover_art_file(path, with_video: bool = False):
    """An AAC audio file (MP4) whose first stream is a PNG cover picture; ``with_video`` adds a real video."""
    import av

    png = path.with_suffix(".png")
    with av.open(str(png), "w", format="image2") as out:
        s = out.add_stream("png")
        s.width = s.height = 32
        s.pix_fmt = "rgb24"
        for packet in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    with av.open(str(path), "w", format="mp4") as out:
        pic = out.add_stream("png")
        pic.width = pic.height = 32
        pic.pix_fmt = "rgb24"
        pic.disposition = av.stream.Disposition.attached_pic
        audio = out.add_stream("aac", rate=22050)
        video = None
        if with_video:
            video = out.add_stream("mpeg4", rate=Fraction(10))
            video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        packet = av.Packet(png.read_bytes())
        packet.stream, packet.pts, packet.dts = pic, 0, 0
        out.mux(packet)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 22050, i * 1024
            for p in audio.encode(frame):
                out.mux(p)
            if video is not None and i < 10:
                vf = av.VideoFrame.from_ndarray(pattern(), format="rgb24")
                vf.pts = i
                for p in video.encode(vf):
                    out.mux(p)
        for s in (audio, video) if video is not None else (audio,):
            for p in s.encode():
                out.mux(p)
    return path


def displayed(degrees: int, mirror: bool) -> np.ndarray:
    """The pattern as a player shows it: turned ``degrees`` counter-clockwise, then mirrored left-right."""
    img = np.rot90(pattern(), k=degrees // 90)
    return img[:, ::-1] if mirror else img


ORIENTATIONS = [(90, False), (180, False), (270, False), (0, True), (90, True)]


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
@pytest.mark.parametrize("degrees,mirror", ORIENTATIONS)
def test_rotation_is_applied_before_resizing(tmp_path, decoder, degrees, mirror):
    if decoder == "decord":
        pytest.importorskip("decord")
    path = write_rotated(tmp_path / "phone.mp4", degrees, mirror)
    sampler = FrameSampler(path, fps=2.0, decoder=decoder)
    first = next(iter(sampler)).frames[0].numpy().astype(float)  # (H', W', 3) as displayed
    list(sampler)
    want = displayed(degrees, mirror).astype(float)
    assert first.shape == want.shape
    err = np.abs(first - want).mean()
    wrong = min(np.abs(first - displayed(d, m).astype(float)).mean()
                for d in (0, 90, 180, 270) for m in (False, True)
                if (d, m) != (degrees, mirror) and displayed(d, m).shape == want.shape
                and not np.array_equal(displayed(d, m), want))
    assert err < 8 and wrong > 40, (err, wrong)
    assert sampler.info.frame_size == (want.shape[1], want.shape[0])
    o = sampler.info.orientation
    assert np.array_equal(displayed(o.rotation, o.mirror), want)  # what is recorded is what was applied


def test_orientation_of_a_phone_portrait_matrix():
    from stale_cli.video import Orientation

    # The matrix a phone writes for a portrait clip stored landscape (QuickTime "rotate=90": turn it clockwise to
    # show it), i.e. 270 degrees counter-clockwise; ffmpeg's av_display_rotation_get reads -90 from it.
    iphone = [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]
    assert Orientation.from_matrix(iphone) == Orientation(rotation=270, mirror=False)
    assert Orientation.from_matrix([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]) == Orientation()
    assert Orientation.from_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]) == Orientation(0, mirror=True)


def test_sidecar_records_displayed_size_and_rotation(tmp_path, tiny_clip_name, tiny_clip_weights):
    path = write_rotated(tmp_path / "portrait.mp4", 90)
    r = CliRunner().invoke(app, ["extract-features", str(path), "--out", str(tmp_path / "f"), "--clip-model",
                                 tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "f" / "portrait.json").read_text())
    assert meta["frame_size"] == [H, W] and meta["rotation"] == 90 and meta["mirrored"] is False


@pytest.mark.parametrize("decoder", ["auto", "pyav", "decord"])
def test_cover_art_is_not_a_video(tmp_path, decoder):
    if decoder == "decord":
        pytest.importorskip("decord")
    song = write_cover_art_file(tmp_path / "song.m4a")
    with pytest.raises(DecodeError, match="no video stream .*attached picture"):
        list(FrameSampler(song, fps=4.0, decoder=decoder))


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_the_main_video_stream_is_chosen_over_cover_art(tmp_path, decoder):
    if decoder == "decord":
        pytest.importorskip("decord")
    clip = write_cover_art_file(tmp_path / "clip.mp4", with_video=True)
    sampler = FrameSampler(clip, fps=4.0, decoder=decoder)
    first = next(iter(sampler)).frames[0].numpy()
    list(sampler)
    assert first.shape == (H, W, 3) and sampler.info.num_frames == 10 and not sampler.info.warnings


def test_cover_art_file_in_a_batch_is_one_error(tmp_path, videos, tiny_clip_name, tiny_clip_weights):
    song = write_cover_art_file(tmp_path / "song.mp4")
    r = CliRunner().invoke(app, ["extract-features", str(song), str(videos["single"]["path"]), "--out",
                                 str(tmp_path / "f"), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "song.mp4: the file has no video stream" in r.output
    assert not [l for l in r.output.splitlines() if l.startswith("warning") and "song" in l]  # no 1-row "video"
    assert (tmp_path / "f" / "single.npy").is_file() and not (tmp_path / "f" / "song.npy").exists()


def test_list_with_a_bad_line_runs_the_rest(tmp_path, videos, tiny_clip_name, tiny_clip_weights):
    listed = tmp_path / "list.txt"
    listed.write_text(f"{videos['single']['path']}\n{tmp_path / 'gone.mp4'}\n{videos['cfr25']['path']}\n")
    bad: list = []
    assert collect_inputs([f"@{listed}"], bad=bad) == [videos["single"]["path"], videos["cfr25"]["path"]]
    assert len(bad) == 1 and "gone.mp4" in bad[0][1]
    r = CliRunner().invoke(app, ["extract-features", f"@{listed}", "--out", str(tmp_path / "f"), "--fps", "1",
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "gone.mp4: no such file" in r.output and "1 input(s) failed" in r.output
    assert (tmp_path / "f" / "single.npy").is_file() and (tmp_path / "f" / "cfr25.npy").is_file()


def test_linked_directories_are_followed_once_and_broken_links_reported(tmp_path, videos):
    root, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(videos["single"]["path"], root / "real" / "a.mp4")
    os.symlink(videos["cfr25"]["path"], elsewhere / "b.mp4")
    os.symlink(elsewhere, root / "linked")  # a symlinked subdirectory: rglob skipped it silently
    os.symlink(root, root / "real" / "loop")  # a link back up: must not loop
    os.symlink(tmp_path / "nowhere.mp4", root / "broken.mp4")
    bad: list = []
    found = collect_inputs([str(root)], bad=bad)
    assert [p.name for p in found] == ["b.mp4", "a.mp4"]
    assert [os.path.basename(entry) for entry, _ in bad] == ["broken.mp4"] and "broken symbolic link" in bad[0][1]
    with pytest.raises(Exception, match="broken symbolic link"):
        collect_inputs([str(root)])  # without a place to report it, it is an error, never silence


def test_training_feature_index_follows_links(tmp_path, caplog):
    from stale_cli.data.dataset import index_features

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
