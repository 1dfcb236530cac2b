"""decord decoding: a sampler's samples (PyAV takes over on :class:`_DecordFailed`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from stale_cli.errors import first_line
from stale_cli.features.video.frames import DECODE_GROUP, EPS, check_frame_size, frames_per_group, select_frames
from stale_cli.features.video.pyav_decoder import probe_orientation
from stale_cli.features.video.stderr_capture import decord_log_to_debug


def have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


class _DecordFailed(Exception):
    """decord could not open or decode the file (internal: PyAV takes over)."""


def decord_samples(sampler) -> Iterator[tuple]:
    """(k, time, frame after the transform) for each sample of ``sampler``'s file."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its ffmpeg's messages; failures are reported by us
    shown, coded, turned = probe_orientation(sampler.path)  # raises NoVideoStream for cover art only
    if coded is not None:
        check_frame_size(sampler.path, *coded, sampler.max_pixels)
    # Run the transform once before decord opens the file: when torch's first parallel resize in this
    # process starts while a VideoReader is open, resident memory jumps by about the file's index size
    # times ~10 (measured: +0.45 GB for a 1-minute, +1.6 GB for a 30-minute 768x576 video), and stays.
    sampler.transform(torch.zeros(1, 48, 64, 3, dtype=torch.uint8))
    try:
        with decord_log_to_debug():
            vr = decord.VideoReader(str(sampler.path), ctx=decord.cpu(0), num_threads=sampler.threads)
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
        end = times[-1] + (1.0 / rate if rate > 0 else (times[-1] / max(n - 1, 1) or 1.0 / sampler.fps))
    picks = select_frames(times, end, sampler.fps)  # (T,)
    sampler.info.num_frames = n
    sampler.info.start_time = t0
    sampler.info.duration = end
    sampler.info.native_fps = float(vr.get_avg_fps() or 0) or None
    sampler.info.num_samples = len(picks)
    sampler.info.orientation = shown
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
            with decord_log_to_debug():
                raw = vr.get_batch(group.tolist()).asnumpy().copy()
        except Exception as e:
            raise _DecordFailed(first_line(e)) from e
        if residual is None:
            # decord turns frames by the matrix's rotation (measured with decord 0.6) but not its mirror;
            # where the frame shape shows it did not turn a quarter rotation, everything is left to us.
            upright = turned in (90, 270) and coded is not None and raw.shape[1:3] == (coded[1], coded[0])
            residual = shown if upright else shown.then_undo(turned)
        frames = residual.apply(torch.from_numpy(raw))  # (g, H, W, 3) as displayed
        sampler.info.frame_size = (frames.shape[2], frames.shape[1])
        small = sampler.transform(frames)  # (g, H', W', 3)
        del raw, frames
        lookup = {int(i): j for j, i in enumerate(group)}
        lo = np.searchsorted(picks, group[0], side="left")
        hi = np.searchsorted(picks, group[-1], side="right")
        for k in range(lo, hi):
            yield (k, float(times[picks[k]]), small[lookup[int(picks[k])]])
