"""Decoding videos (stale_cli/features/video/): frame sampling by presentation time with both decoders, on synthetic
videos whose frames carry their number; damaged files; rotated phone videos (rotation applied before resizing, recorded
in the sidecar) and cover art (never taken for the video)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import read_frame_number
from stale_cli.cli import app
from stale_cli.errors import DecodeError
from stale_cli.features.video import FrameSampler, _Selector, num_samples, select_frames

DECODERS = ["decord", "pyav"]


def expected_frames(times, end, fps):
    """Brute force: sample k shows the last frame whose time <= k / fps, for every k / fps < end."""
    T = max(1, int(np.ceil(end * fps - 1e-9)))
    return [max(i for i, t in enumerate(times) if t <= k / fps + 1e-9) for k in range(T)]


def decode(path, fps, decoder, **kw):
    sampler = FrameSampler(path, fps, decoder=decoder, **kw)
    chunks = list(sampler)
    frames = [f.numpy() for c in chunks for f in c.frames]
    indices = np.concatenate([c.indices for c in chunks]) if chunks else np.zeros(0)
    return sampler.info, frames, indices, chunks


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", ["cfr25", "ntsc", "vfr", "late"])
@pytest.mark.parametrize("fps", [4.0, 30.0, 2.5])
def test_samples_are_the_frames_shown_at_k_over_fps(videos, name, fps, decoder):
    v = videos[name]
    info, frames, indices, _ = decode(v["path"], fps, decoder)
    assert info.decoder == decoder
    assert info.num_frames == len(v["times"])
    if v["duration"] is not None:
        assert info.duration == pytest.approx(v["duration"], abs=1e-6)
    else:  # the last frame's display duration is the muxer's: it ends after the last frame starts
        assert v["times"][-1] < info.duration <= v["times"][-1] + 0.2 + 1e-6
    want = expected_frames(v["times"], info.duration, fps)
    got = [read_frame_number(f) for f in frames]
    assert got == want
    np.testing.assert_array_equal(indices, np.arange(len(want)))
    assert info.num_samples == len(want) == num_samples(info.duration, fps)
    assert not info.warnings


def test_ntsc_timestamps_against_known_values(videos):
    # 29.97 fps: frame n is shown from n * 1001 / 30000 s; at 4 fps sample k (t = k/4) shows floor(k/4 * 29.97...).
    info, frames, _, chunks = decode(videos["ntsc"]["path"], 4.0, "pyav")
    got = [read_frame_number(f) for f in frames]
    assert got == [int(np.floor(k / 4 * 30000 / 1001 + 1e-9)) for k in range(13)]  # 3.003 s: k = 0..12
    assert got[:5] == [0, 7, 14, 22, 29]  # not 0, 7.5, 15, 22.5, 30 as a nominal 30 fps would have it
    frame_times = np.concatenate([c.frame_times for c in chunks])
    np.testing.assert_allclose(frame_times, np.array(got) * 1001 / 30000, atol=1e-6)


def test_stream_not_starting_at_zero(videos):
    for decoder in DECODERS:
        info, frames, _, chunks = decode(videos["late"]["path"], 4.0, decoder)
        assert info.start_time == pytest.approx(1.5, abs=1e-3)
        assert [read_frame_number(f) for f in frames][:3] == [0, 6, 12]
        assert np.concatenate([c.frame_times for c in chunks])[0] == 0.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_single_frame_video_gives_one_sample_and_a_warning(videos, decoder):
    info, frames, _, _ = decode(videos["single"]["path"], 4.0, decoder)
    assert len(frames) == 1 and read_frame_number(frames[0]) == 0
    assert info.duration == pytest.approx(0.04)
    assert any("sampling interval" in w for w in info.warnings)


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_truncated_file_decodes_what_it_can_and_warns(bad_files, decoder):
    info, frames, _, _ = decode(bad_files["truncated"], 4.0, decoder)
    assert 0 < len(frames) < 40  # the whole file would give 10 s x 4 fps
    got = [read_frame_number(f) for f in frames]
    assert got == [int(k * 25 / 4) for k in range(len(got))]
    assert any("truncated" in w for w in info.warnings)


@pytest.mark.parametrize("name", ["no_frames", "garbage", "text"])
def test_undecodable_files_raise_decode_error_naming_the_file(bad_files, name):
    with pytest.raises(DecodeError, match=str(bad_files[name].name)):
        decode(bad_files[name], 4.0, "auto")


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="no such file"):
        decode(tmp_path / "nope.mp4", 4.0, "auto")


def test_transform_and_chunks_bound_memory(videos):
    # resize to 16x16 right after decoding; chunks hold at most chunk_size frames
    shrink = lambda x: x[:, ::4, ::6].contiguous()  # (n, 64, 96, 3) -> (n, 16, 16, 3)
    _, _, indices, chunks = decode(videos["cfr25"]["path"], 25.0, "auto", transform=shrink, chunk_size=7)
    assert all(c.frames.shape[1:] == (16, 16, 3) and c.frames.dtype == torch.uint8 for c in chunks)
    assert [len(c.indices) for c in chunks] == [7] * 14 + [2]
    np.testing.assert_array_equal(indices, np.arange(100))


def test_decord_failure_part_way_hands_over_to_pyav(videos, monkeypatch):
    """If decord dies after some samples, PyAV continues from the first sample it did not deliver."""
    real = FrameSampler._decord_samples

    def failing(self):
        for n, item in enumerate(real(self)):
            if n == 5:
                from stale_cli.features.video import _DecordFailed

                raise _DecordFailed("simulated")
            yield item

    monkeypatch.setattr(FrameSampler, "_decord_samples", failing)
    info, frames, indices, _ = decode(videos["cfr25"]["path"], 4.0, "decord", chunk_size=3)
    assert info.decoder == "decord+pyav"
    np.testing.assert_array_equal(indices, np.arange(16))
    assert [read_frame_number(f) for f in frames] == [int(k * 25 / 4) for k in range(16)]


def test_streaming_selector_matches_select_frames():
    rng = np.random.default_rng(1)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.5, size=60))])
    end = times[-1] + 0.1
    for fps in (0.7, 4.0, 30.0):
        sel = _Selector(fps)
        out = []
        for i, t in enumerate(times):
            out += sel.push(float(t), i)
        out += sel.finish(end)
        assert [f for _, _, f in out] == select_frames(times, end, fps).tolist()
        assert [k for k, _, _ in out] == list(range(num_samples(end, fps)))


def test_auto_uses_pyav_and_decord_for_files_pyav_cannot_read(videos, monkeypatch):
    info, _, _, _ = decode(videos["cfr25"]["path"], 4.0, "auto")
    assert info.decoder == "pyav"

    def unreadable(self, skip):
        raise DecodeError(f"{self.path}: not a readable video (simulated)")
        yield

    monkeypatch.setattr(FrameSampler, "_pyav_samples", unreadable)
    info, frames, _, _ = decode(videos["cfr25"]["path"], 4.0, "auto")
    assert info.decoder == "decord"
    assert [read_frame_number(f) for f in frames] == [int(k * 25 / 4) for k in range(16)]


def _joined_ts(tmp_path):
    """Two 2-second MPEG-TS files joined byte for byte (`cat a.ts b.ts`): the timestamps restart at 0 half way."""
    from fractions import Fraction

    import av

    from conftest import make_video

    if "mpegts" not in av.formats_available:
        pytest.skip("this PyAV's FFmpeg has no MPEG-TS muxer to make the joined file with")
    part = make_video(tmp_path / "part.ts", [Fraction(i, 25) for i in range(50)], Fraction(1, 25))
    joined = tmp_path / "backwards.ts"
    joined.write_bytes(part.read_bytes() * 2)
    part.unlink()
    return joined


def test_timestamps_jumping_back_continue_the_timeline(tmp_path):
    """Issue 17 item 8: the second half of a joined file was dropped (8 samples, 2.0 s for a 4 s file)."""
    info, frames, indices, chunks = decode(_joined_ts(tmp_path), 4.0, "pyav")
    assert info.duration == pytest.approx(4.0, abs=1e-6) and info.num_frames == 100
    assert indices.tolist() == list(range(16))
    times = np.concatenate([c.frame_times for c in chunks])
    assert np.all(np.diff(times) > 0) and times[8] == pytest.approx(2.0)
    # sample k (at k / 4 s) shows frame floor(25 k / 4) of its own half (each half numbers its frames from 0)
    assert [read_frame_number(f) for f in frames] == [25 * k // 4 for k in range(8)] * 2
    assert any("jump back" in w for w in info.warnings)


def test_extract_features_of_a_joined_file_covers_both_halves(tmp_path, tiny_clip_name, tiny_clip_weights):
    import json

    from typer.testing import CliRunner

    from stale_cli.cli import app

    joined = _joined_ts(tmp_path)
    r = CliRunner().invoke(app, ["extract-features", str(joined), "--out", str(tmp_path / "f"), "--fps", "4",
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "jump back" in r.stderr
    meta = json.loads((tmp_path / "f" / "backwards.json").read_text())
    assert meta["num_rows"] == 16 and meta["duration"] == pytest.approx(4.0)


def test_decord_log_lines_do_not_reach_stderr(bad_files, capfd):
    pytest.importorskip("decord")
    from stale_cli.errors import DecodeError
    from stale_cli.features.video import FrameSampler

    for name in ("garbage", "text"):  # "ERROR opening", "Failed to seek file to position: 0"
        for decoder in ("decord", "auto"):
            with pytest.raises(DecodeError):
                list(FrameSampler(bad_files[name], 4.0, decoder=decoder))
    assert sum(len(c.indices) for c in FrameSampler(bad_files["truncated"], 4.0, decoder="decord")) > 0
    err = capfd.readouterr().err
    assert ".cc:" not in err and "ERROR opening" not in err and "Failed to seek" not in err, err


def test_huge_frames_are_decoded_few_at_a_time_or_refused(videos):
    from stale_cli.errors import DecodeError
    from stale_cli.features.video import DECODE_GROUP, FrameSampler, frames_per_group

    assert frames_per_group(1920, 1080) == DECODE_GROUP and frames_per_group(8192, 4320) == 2
    assert frames_per_group(16384, 16384) == 1
    small = videos["cfr25"]["path"]  # 96 x 64 = 6144 pixels
    with pytest.raises(DecodeError, match="frames of 96 x 64 pixels are larger than stale decodes"):
        list(FrameSampler(small, 4.0, decoder="pyav", max_pixels=6000))
    assert len(list(FrameSampler(small, 4.0, decoder="pyav", max_pixels=6144))) > 0


# ---------------------------------------------------------------- rotated phone videos, cover art (made with PyAV)

# The rotated and cover-art files are made with PyAV (its ``set_display_rotation`` writes the display matrix a phone
# writes; an attached picture is a video stream with the ``attached_pic`` disposition): no binary is committed and no
# ffmpeg program is needed.

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
    from stale_cli.features.video import Orientation

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
