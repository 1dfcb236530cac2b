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

import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from stale_cli.errors import DecodeError
from stale_cli.features.video.decord_decoder import _DecordFailed, decord_samples, have_decord
from stale_cli.features.video.frames import (  # noqa: F401 (the package's public names)
    DECODE_GROUP,
    EPS,
    GROUP_BYTES,
    MAX_FRAME_PIXELS,
    FrameChunk,
    NoVideoStream,
    Orientation,
    VideoInfo,
    _Selector,
    frames_per_group,
    num_samples,
    select_frames,
)
from stale_cli.features.video.pyav_decoder import probe_header, probe_orientation, pyav_samples  # noqa: F401

__all__ = [
    "DECODE_GROUP", "EPS", "GROUP_BYTES", "MAX_FRAME_PIXELS", "FrameChunk", "FrameSampler", "NoVideoStream",
    "Orientation", "VideoInfo", "frames_per_group", "num_samples", "probe_header", "probe_orientation",
    "select_frames",
]

log = logging.getLogger(__name__)


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
        if self.decoder == "decord" and not have_decord():
            raise DecodeError("decord is not installed; use decoder='pyav' or 'auto'")
        if self.decoder == "decord":
            yield from self._decord_then_pyav()
        elif self.decoder == "pyav" or not have_decord():
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
    def _decord_samples(self) -> Iterator[tuple]:
        return decord_samples(self)

    def _pyav_samples(self, skip: int) -> Iterator[tuple]:
        return pyav_samples(self, skip)
