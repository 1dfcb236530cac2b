"""Video frames and their timing: the sampling contract (see :mod:`stale_cli.features.video`), chunk and info types, the
display orientation, frame-size limits and the "no video stream" error shared by the decoders."""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from stale_cli.errors import DecodeError

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



def _no_video_message(path, container) -> str:
    what = " (only an attached picture, e.g. an audio file's cover art)" if container.streams.video else ""
    return f"{path}: the file has no video stream{what}"


class NoVideoStream(DecodeError):
    """The file opens but holds no video to sample (no other decoder is tried)."""
