"""Video decoding: frames sampled at a fixed rate by presentation time, RGB, resized right after decoding.

Sampling contract (docs/design.md, seconds are the truth): with ``t0`` the presentation time of the stream's first
frame, sample ``k`` is the frame *displayed* at ``t0 + k / fps``, i.e. the last frame whose presentation time is
at or before that instant. A video is displayed from ``t0`` to ``end`` = last frame's time + its duration, and
``duration = end - t0``; samples are taken for every ``k`` with ``k / fps < duration``. This is right for
29.97 fps, variable frame rate and streams that do not start at 0, because only timestamps are used, never
frame index / nominal rate. Sample times are reported relative to ``t0`` (so sample ``k`` is at ``k / fps``).

A video shorter than one sampling interval (``duration <= 1 / fps``, e.g. a single frame) still gives one
sample (its first frame, at 0 s) and a warning: one row of features is all it has.

Decoders: ``auto`` (the default) decodes with PyAV and falls back to decord for a file PyAV cannot open or
decode at all; ``decord`` decodes with decord, PyAV taking over when decord cannot open the file or fails
part-way (from the first sample decord did not deliver); ``pyav`` uses PyAV only. PyAV comes first because,
measured on a 30-minute 768x576 video in the threaded pipeline (benchmarks/extract.py), decord's resident memory
grows with the video's length (peak 5.9 GB for 30 minutes vs 1.4 GB for 1 minute: it jumps whenever torch runs
parallel work while a decord VideoReader is open), while PyAV's stays flat (1.46 GB), and PyAV was also the
faster of the two on that file. A truncated or corrupt file yields what is
decodable, with a warning; no decodable frame at all raises :class:`~stale_cli.errors.DecodeError`.

Timestamps that jump back by more than half a second (two files joined with ``cat a.ts b.ts``) restart the
timeline: the frames after the jump follow those before it, one frame step later, as a player shows them, with a
warning. A smaller step back (a frame or two out of order in a damaged file) keeps the time of the frame before.

Orientation: a phone video is usually stored landscape with a display matrix saying how to turn it (PyAV reports
``frame.rotation == 90`` for a portrait clip). Frames are turned as a player shows them (rotation by a multiple of
90 degrees, then a left-right mirror where the matrix has one) *before* the resize, so CLIP sees people upright;
``VideoInfo`` records the displayed frame size and what was applied. decord turns frames by the matrix's rotation
itself but ignores its mirror; the decord path applies what remains.

Stream: the video stream decoded is the first one that is not an attached picture (the cover art of an audio file
or the thumbnail of a recording); a file with no other video stream is "no video stream", whatever the decoder.

Memory is bounded: :class:`FrameSampler` yields chunks of at most ``chunk_size`` sampled frames, already resized,
and decodes at most ``DECODE_GROUP`` full-resolution frames (fewer for 8K video, ``GROUP_BYTES``) before resizing
them; frames of more than ``MAX_FRAME_PIXELS`` are refused before any is decoded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from stale_cli.errors import DecodeError, first_line

log = logging.getLogger(__name__)

EPS = 1e-6  # seconds: timestamps closer than this count as equal (pts are exact rationals; k / fps is a float)
DECODE_GROUP = 8  # full-resolution frames held at once before they are resized
GROUP_BYTES = 256 << 20  # ... fewer where 8 RGB frames would take more than this (8K video: 2 at a time)
# Frames larger than this are refused (8192 x 8192: beyond any camera's video; one such RGB frame is 200 MB, and
# decoding holds several copies of it).
MAX_FRAME_PIXELS = 8192 * 8192
# seconds: timestamps going back by more than this (and two frame steps) restart the timeline (joined files);
# less is a frame or two out of order, shown at the time of the frame before
BACKWARD_JUMP = 0.5


@dataclass
class FrameChunk:
    frames: torch.Tensor  # uint8 (n, H', W', 3) RGB, after `transform`
    indices: np.ndarray  # int64 (n,): sample numbers k
    frame_times: np.ndarray  # float64 (n,): time of the frame shown, seconds relative to the first frame


@dataclass
class VideoInfo:
    """What is known about a decoded video once its sampler has been exhausted."""

    decoder: str = ""  # "decord", "pyav" or "decord+pyav"
    num_frames: int = 0  # frames decoded from the source
    num_samples: int = 0
    start_time: float = 0.0  # presentation time of the first frame in the file, seconds
    duration: float = 0.0  # seconds from the first frame to the end of the last
    native_fps: Optional[float] = None
    frame_size: Optional[tuple] = None  # (width, height) of the frames as displayed, before the resize
    orientation: "Orientation" = field(default_factory=lambda: Orientation())  # turn applied to decoded frames
    warnings: list = field(default_factory=list)


@dataclass(frozen=True)
class Orientation:
    """How decoded frames are turned for display: ``rotation`` degrees counter-clockwise, then mirrored left-right."""

    rotation: int = 0  # 0, 90, 180 or 270
    mirror: bool = False

    @classmethod
    def from_matrix(cls, matrix) -> "Orientation":
        """From FFmpeg's 3x3 display matrix (9 ints, 16.16 fixed point), to the nearest multiple of 90 degrees."""
        a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
        mirror = a * d - b * c < 0
        if mirror:  # a mirror negates the matrix's first column; undo it to read the rotation
            a, c = -a, -c
        angle = math.degrees(math.atan2(c, a))
        quarter = round(angle / 90)
        if abs(angle - 90 * quarter) > 1.0:
            log.warning("display matrix rotates by %.1f degrees; using the nearest multiple of 90", angle)
        return cls(rotation=quarter % 4 * 90, mirror=mirror)

    def then_undo(self, rotation: int) -> "Orientation":
        """What is left to apply to frames that were already turned by ``rotation`` degrees (decord's own turn)."""
        return Orientation((self.rotation - rotation) % 360, self.mirror)

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(n, H, W, 3)`` -> the frames as displayed: ``(n, H, W, 3)``, or ``(n, W, H, 3)`` for 90/270."""
        if self.rotation:
            frames = torch.rot90(frames, k=self.rotation // 90, dims=(1, 2))  # counter-clockwise
        if self.mirror:
            frames = torch.flip(frames, dims=(2,))
        return frames.contiguous() if (self.rotation or self.mirror) else frames


def frame_orientation(frame) -> Orientation:
    """The display orientation a PyAV ``VideoFrame`` carries in its side data (none: upright)."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", "") == "DISPLAYMATRIX":
            return Orientation.from_matrix(struct.unpack("9i", bytes(sd)[:36]))
    return Orientation()


def main_video_stream(container):
    """The stream a player would show: the first video stream that is not an attached picture (cover art) or a
    thumbnail track; None if there is none."""
    import av

    still = int(av.stream.Disposition.attached_pic) | int(av.stream.Disposition.timed_thumbnails)
    for stream in container.streams.video:
        if not int(stream.disposition) & still:
            return stream
    return None


def _have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def frames_per_group(width: int, height: int) -> int:
    """Full-resolution frames decoded before they are resized together: ``DECODE_GROUP``, fewer for large frames."""
    return max(1, min(DECODE_GROUP, GROUP_BYTES // max(1, width * height * 3)))


def check_frame_size(path, width: int, height: int, max_pixels: int) -> None:
    """A DecodeError for frames of more than ``max_pixels`` pixels, before any is decoded in full."""
    if width * height > max_pixels:
        raise DecodeError(f"{path}: frames of {width} x {height} pixels are larger than stale decodes (at most "
                          f"{max_pixels} pixels, e.g. 8192 x 8192); scale the video down first")


def num_samples(duration: float, fps: float) -> int:
    """Number of samples k with k / fps < duration (at least 1 for a video with any frame)."""
    return max(1, math.ceil(duration * fps - EPS * fps))


def select_frames(frame_times: np.ndarray, end: float, fps: float) -> np.ndarray:
    """Frame index displayed at each sample time. ``frame_times``: (F,) seconds from the first frame, sorted.

    Returns int64 (T,) with T = num_samples(end, fps): entry k is the last frame with time <= k / fps.
    """
    targets = np.arange(num_samples(end, fps)) / fps  # (T,)
    idx = np.searchsorted(frame_times, targets + EPS, side="right") - 1
    return np.clip(idx, 0, len(frame_times) - 1).astype(np.int64)


class _Selector:
    """Streaming form of :func:`select_frames` for a decoder that delivers frames one at a time in order."""

    def __init__(self, fps: float, skip: int = 0):
        self.fps = fps
        self.k = 0
        self.skip = skip  # samples already delivered by another decoder
        self.prev = None
        self.prev_t = 0.0

    def push(self, t: float, frame) -> list:
        """Offer the frame shown from time ``t`` on; returns [(k, time, frame)] of samples now decided."""
        out = []
        while self.prev is not None and self.k / self.fps < t - EPS:
            if self.k >= self.skip:
                out.append((self.k, self.prev_t, self.prev))
            self.k += 1
        self.prev, self.prev_t = frame, t
        return out

    def finish(self, end: float) -> list:
        out = []
        while self.prev is not None and (self.k / self.fps < end - EPS or self.k == 0):
            if self.k >= self.skip:
                out.append((self.k, self.prev_t, self.prev))
            self.k += 1
        return out


class FrameSampler:
    """Iterate over a video's samples in chunks: ``for chunk in FrameSampler(path, fps=4.0, transform=f): ...``.

    ``transform`` maps uint8 ``(n, H, W, 3)`` RGB frames to what the chunks hold (the CLIP resize); it is applied
    right after decoding, at most ``DECODE_GROUP`` full-resolution frames at a time. ``info`` is complete once
    the iteration ends. ``decoder``: "auto" (PyAV, decord for files PyAV cannot read), "decord" (decord, PyAV
    on failure) or "pyav".
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        chunk_size: int = 32,
        decoder: str = "auto",
        threads: int = 1,
        max_pixels: int = MAX_FRAME_PIXELS,
    ):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.max_pixels = max_pixels  # a larger frame is a DecodeError (memory)
        self.path = Path(path)
        self.fps = float(fps)
        self.transform = transform or (lambda x: x)
        self.chunk_size = chunk_size
        self.decoder = decoder
        self.threads = threads
        self.info = VideoInfo()

    # -- chunking -------------------------------------------------------------------------------------------
    def _chunks(self, samples: Iterator[tuple]) -> Iterator[FrameChunk]:
        """(k, time, frame uint8 tensor (h, w, 3) after transform) -> FrameChunk of up to chunk_size."""
        buf = []
        for s in samples:
            buf.append(s)
            if len(buf) == self.chunk_size:
                yield self._chunk(buf)
                buf = []
        if buf:
            yield self._chunk(buf)

    @staticmethod
    def _chunk(buf: list) -> FrameChunk:
        return FrameChunk(
            frames=torch.stack([f for _, _, f in buf]),  # (n, H', W', 3)
            indices=np.array([k for k, _, _ in buf], dtype=np.int64),
            frame_times=np.array([t for _, t, _ in buf], dtype=np.float64),
        )

    def __iter__(self) -> Iterator[FrameChunk]:
        if not self.path.is_file():
            raise DecodeError(f"{self.path}: no such file")
        if self.decoder == "decord" and not _have_decord():
            raise DecodeError("decord is not installed; use decoder='pyav' or 'auto'")
        if self.decoder == "decord":
            yield from self._decord_then_pyav()
        elif self.decoder == "pyav" or not _have_decord():
            self.info.decoder = "pyav"
            yield from self._chunks(self._pyav_samples(skip=0))
        else:  # auto: PyAV, and decord for a file PyAV cannot open or decode at all
            self.info.decoder = "pyav"
            try:
                yield from self._chunks(self._pyav_samples(skip=0))
            except NoVideoStream:
                raise
            except DecodeError as pyav_error:
                try:
                    yield from self._decord_then_pyav(reraise=pyav_error)
                except _DecordFailed:
                    raise pyav_error from None
        start, declared = probe_header(self.path)
        if self.info.decoder == "decord" and start is not None:
            self.info.start_time = start  # decord's timestamps are relative to the stream start
        decoded = self.info.start_time + self.info.duration
        if declared is not None and decoded < declared - max(1.0, 0.02 * declared):
            self._warn(
                f"file looks truncated or damaged: decoded {decoded:.2f} s of the {declared:.2f} s its header "
                "declares; features cover the decodable part only"
            )
        if self.info.duration <= 1.0 / self.fps + EPS:
            self._warn(
                f"video is {self.info.duration:.3f} s long, not longer than one sampling interval "
                f"({1 / self.fps:.3g} s at --fps {self.fps:g}): it gives a single feature row"
            )

    def _decord_then_pyav(self, reraise: Optional[DecodeError] = None) -> Iterator[FrameChunk]:
        """decord; if it fails part-way, PyAV continues from the first sample decord did not deliver."""
        delivered = 0
        try:
            for chunk in self._chunks(self._decord_samples()):
                delivered = int(chunk.indices[-1]) + 1
                yield chunk
            self.info.decoder = "decord"
        except _DecordFailed as e:
            if reraise is not None and not delivered:
                raise
            log.debug("%s: decord failed (%s) after %d samples; continuing with PyAV", self.path, e, delivered)
            self.info.decoder = "decord+pyav" if delivered else "pyav"
            yield from self._chunks(self._pyav_samples(skip=delivered))

    def _warn(self, message: str) -> None:
        self.info.warnings.append(message)

    # -- decord ---------------------------------------------------------------------------------------------
    def _decord_samples(self) -> Iterator[tuple]:
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # its ffmpeg's messages; failures are reported by us
        shown, coded, turned = probe_orientation(self.path)  # raises NoVideoStream for cover art only
        if coded is not None:
            check_frame_size(self.path, *coded, self.max_pixels)
        # Run the transform once before decord opens the file: when torch's first parallel resize in this
        # process starts while a VideoReader is open, resident memory jumps by about the file's index size
        # times ~10 (measured: +0.45 GB for a 1-minute, +1.6 GB for a 30-minute 768x576 video), and stays.
        self.transform(torch.zeros(1, 48, 64, 3, dtype=torch.uint8))
        try:
            with _decord_log_to_debug():
                vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
                n = len(vr)
                if n == 0:
                    raise _DecordFailed("no frames")
                ts = vr.get_frame_timestamp(np.arange(n))  # (F, 2) start/end seconds
        except _DecordFailed:
            raise
        except Exception as e:  # decord raises its own DECORDError, RuntimeError or ValueError
            raise _DecordFailed(first_line(e)) from e
        starts = ts[:, 0].astype(np.float64)
        if not np.all(np.isfinite(starts)) or np.any(np.diff(starts) < -EPS):
            raise _DecordFailed("unusable frame timestamps")
        t0 = float(starts[0])
        times = starts - t0  # (F,)
        end = float(ts[-1, 1]) - t0
        if not end > times[-1]:
            rate = float(vr.get_avg_fps() or 0)
            end = times[-1] + (1.0 / rate if rate > 0 else (times[-1] / max(n - 1, 1) or 1.0 / self.fps))
        picks = select_frames(times, end, self.fps)  # (T,)
        self.info.num_frames = n
        self.info.start_time = t0
        self.info.duration = end
        self.info.native_fps = float(vr.get_avg_fps() or 0) or None
        self.info.num_samples = len(picks)
        self.info.orientation = shown
        residual = None
        # Decode distinct frames in small groups, resize each group at once, then repeat a frame where several
        # samples fall on it (fps above the video's own rate).
        distinct = np.unique(picks)
        step = DECODE_GROUP if coded is None else frames_per_group(*coded)
        for g in range(0, len(distinct), step):
            group = distinct[g : g + step]
            try:
                # (g, H, W, 3) uint8 RGB. Copied: torch's resize on decord's own buffer (16-byte aligned) runs
                # ~100x slower than on a fresh numpy array.
                with _decord_log_to_debug():
                    raw = vr.get_batch(group.tolist()).asnumpy().copy()
            except Exception as e:
                raise _DecordFailed(first_line(e)) from e
            if residual is None:
                # decord turns frames by the matrix's rotation (measured with decord 0.6) but not its mirror;
                # where the frame shape shows it did not turn a quarter rotation, everything is left to us.
                upright = turned in (90, 270) and coded is not None and raw.shape[1:3] == (coded[1], coded[0])
                residual = shown if upright else shown.then_undo(turned)
            frames = residual.apply(torch.from_numpy(raw))  # (g, H, W, 3) as displayed
            self.info.frame_size = (frames.shape[2], frames.shape[1])
            small = self.transform(frames)  # (g, H', W', 3)
            del raw, frames
            lookup = {int(i): j for j, i in enumerate(group)}
            lo = np.searchsorted(picks, group[0], side="left")
            hi = np.searchsorted(picks, group[-1], side="right")
            for k in range(lo, hi):
                yield (k, float(times[picks[k]]), small[lookup[int(picks[k])]])

    # -- PyAV -----------------------------------------------------------------------------------------------
    def _pyav_samples(self, skip: int) -> Iterator[tuple]:
        import av

        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise DecodeError(f"{self.path}: not a readable video ({getattr(e, 'strerror', None) or first_line(e)})") from e
        with container:
            stream = main_video_stream(container)
            if stream is None:
                raise NoVideoStream(_no_video_message(self.path, container))
            check_frame_size(self.path, stream.codec_context.width, stream.codec_context.height, self.max_pixels)
            group = frames_per_group(stream.codec_context.width, stream.codec_context.height)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            rate = float(stream.average_rate) if stream.average_rate else None
            selector = _Selector(self.fps, skip=skip)
            pending = []  # [(k, t, av.VideoFrame)] waiting to be converted and resized as a group
            t0 = None
            last_t, last_dur, count = 0.0, None, 0
            shift = 0.0  # seconds added to the timestamps after each jump back
            converted = {}  # frame number -> resized tensor, so a frame picked by several samples is converted once
            orientation = Orientation()

            def flush():
                todo = {n: fr for _, _, (n, fr) in pending if n not in converted}
                keep = {n: converted[n] for _, _, (n, _) in pending if n in converted}
                if todo:
                    raw = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in todo.values()]))  # (g, H, W, 3)
                    raw = orientation.apply(raw)  # (g, H, W, 3) as displayed
                    self.info.frame_size = (raw.shape[2], raw.shape[1])
                    keep.update(zip(todo.keys(), self.transform(raw)))  # (g, H', W', 3)
                converted.clear()
                converted.update(keep)
                out = [(k, t, converted[n]) for k, t, (n, _) in pending]
                pending.clear()
                return out

            try:
                for frame in container.decode(stream):
                    if frame.pts is None and frame.time is None:
                        t = last_t + (1.0 / rate if rate else 0.0)
                    else:
                        t = float(frame.time)
                    if t0 is None:
                        t0 = t
                        self.info.start_time = t0
                        orientation = self.info.orientation = frame_orientation(frame)
                    t = t - t0 + shift
                    if t < last_t:
                        step = last_dur or (1.0 / rate if rate else 1.0 / self.fps)
                        if t < last_t - max(2 * step, BACKWARD_JUMP):
                            # Timestamps restart (files joined with `cat a.ts b.ts`): the frames that follow are
                            # shown after those before, as a player shows them, one frame step later.
                            shift += last_t + step - t
                            self._warn(f"timestamps jump back by {last_t - t:.2f} s at {last_t:.2f} s (joined "
                                       "files?); the frames after it are taken in file order")
                            t = last_t + step
                        else:  # a frame or two out of order in a broken file: keep display order
                            t = last_t
                    last_t = t
                    last_dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
                    for s in selector.push(t, (count, frame)):
                        pending.append(s)
                    count += 1
                    if len(pending) >= group:
                        yield from flush()
            except (av.FFmpegError, OSError) as e:
                self._warn(f"decoding stopped at {last_t:.2f} s ({first_line(e)}); the rest of the file is unreadable")
            if count == 0:
                raise DecodeError(f"{self.path}: no decodable video frames")
            step = last_dur or (1.0 / rate if rate else (last_t / (count - 1) if count > 1 else 1.0 / self.fps))
            end = last_t + step
            pending.extend(selector.finish(end))
            yield from flush()
            self.info.num_frames = count
            self.info.duration = end
            self.info.native_fps = rate
            self.info.num_samples = selector.k


def probe_header(path: str | os.PathLike) -> tuple:
    """(start, end) of the video stream in seconds as the container header declares them (None where unknown).

    Reads the header only. ffmpeg's container duration is counted from time 0 by some demuxers and from the
    start time by others; the smaller reading is taken as the end, so a truncation check never cries wolf.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = main_video_stream(container)
            if stream is None:
                return None, None
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
            ends = []
            if container.duration:
                ends.append(container.duration / 1e6)  # AV_TIME_BASE units
            if stream.duration and stream.time_base:
                ends.append(float((stream.duration + (stream.start_time or 0)) * stream.time_base))
            return start, (min(ends) if ends else None)
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return None, None


def probe_orientation(path: str | os.PathLike) -> tuple:
    """``(Orientation, coded (w, h) or None, rotation decord applies)`` from the first frame PyAV decodes.

    Raises :class:`NoVideoStream` when PyAV reads the file and it has only attached pictures (or no video); a
    file PyAV cannot read gives ``(Orientation(), None, 0)``.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = main_video_stream(container)
            if stream is None:
                raise NoVideoStream(_no_video_message(path, container))
            for frame in container.decode(stream):
                return frame_orientation(frame), (frame.width, frame.height), round(frame.rotation) % 360
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        pass
    return Orientation(), None, 0


def _no_video_message(path, container) -> str:
    what = " (only an attached picture, e.g. an audio file's cover art)" if container.streams.video else ""
    return f"{path}: the file has no video stream{what}"


class NoVideoStream(DecodeError):
    """The file opens but holds no video to sample (no other decoder is tried)."""


class _DecordFailed(Exception):
    """decord could not open or decode the file (internal: PyAV takes over)."""


# decord's C++ log lines ("[12:00:00] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ...") go
# straight to file descriptor 2, past Python and decord.logging; our own error line says the same thing.
_DECORD_LOG_LINE = re.compile(rb"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: ")
_fd2_lock = threading.Lock()
_fd2_capture: list = []  # one temporary file, made on first use and reused (creating one per call costs ~0.3 ms)


@contextlib.contextmanager
def _decord_log_to_debug() -> Iterator[None]:
    """Send what is written to fd 2 meanwhile to a temporary file; then log decord's lines at debug level and pass
    everything else (another thread's progress bar or log line) on to stderr."""
    fd2 = 2  # where C++ writes, whatever Python's sys.stderr is
    with _fd2_lock:
        if not _fd2_capture:
            _fd2_capture.append(tempfile.TemporaryFile())
        captured = _fd2_capture[0]
        captured.seek(0)
        captured.truncate()
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        saved = os.dup(fd2)
        os.dup2(captured.fileno(), fd2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, fd2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().splitlines(keepends=True):
                if _DECORD_LOG_LINE.match(line):
                    log.debug("decord: %s", line.decode("utf-8", "replace").rstrip())
                else:
                    os.write(fd2, line)
