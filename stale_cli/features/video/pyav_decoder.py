"""PyAV decoding: a sampler's samples, and header / first-frame probes of a file."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from stale_cli.errors import DecodeError, first_line
from stale_cli.features.video.frames import (
    BACKWARD_JUMP,
    NoVideoStream,
    Orientation,
    _no_video_message,
    _Selector,
    check_frame_size,
    frame_orientation,
    frames_per_group,
    main_video_stream,
)


def pyav_samples(sampler, skip: int) -> Iterator[tuple]:
    """(k, time, frame after the transform) for each sample of ``sampler``'s file from sample ``skip`` on."""
    import av

    try:
        container = av.open(str(sampler.path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError(f"{sampler.path}: not a readable video ({getattr(e, 'strerror', None) or first_line(e)})") from e
    with container:
        stream = main_video_stream(container)
        if stream is None:
            raise NoVideoStream(_no_video_message(sampler.path, container))
        check_frame_size(sampler.path, stream.codec_context.width, stream.codec_context.height, sampler.max_pixels)
        group = frames_per_group(stream.codec_context.width, stream.codec_context.height)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = sampler.threads
        rate = float(stream.average_rate) if stream.average_rate else None
        selector = _Selector(sampler.fps, skip=skip)
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
                sampler.info.frame_size = (raw.shape[2], raw.shape[1])
                keep.update(zip(todo.keys(), sampler.transform(raw)))  # (g, H', W', 3)
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
                    sampler.info.start_time = t0
                    orientation = sampler.info.orientation = frame_orientation(frame)
                t = t - t0 + shift
                if t < last_t:
                    step = last_dur or (1.0 / rate if rate else 1.0 / sampler.fps)
                    if t < last_t - max(2 * step, BACKWARD_JUMP):
                        # Timestamps restart (files joined with `cat a.ts b.ts`): the frames that follow are
                        # shown after those before, as a player shows them, one frame step later.
                        shift += last_t + step - t
                        sampler._warn(f"timestamps jump back by {last_t - t:.2f} s at {last_t:.2f} s (joined "
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
            sampler._warn(f"decoding stopped at {last_t:.2f} s ({first_line(e)}); the rest of the file is unreadable")
        if count == 0:
            raise DecodeError(f"{sampler.path}: no decodable video frames")
        step = last_dur or (1.0 / rate if rate else (last_t / (count - 1) if count > 1 else 1.0 / sampler.fps))
        end = last_t + step
        pending.extend(selector.finish(end))
        yield from flush()
        sampler.info.num_frames = count
        sampler.info.duration = end
        sampler.info.native_fps = rate
        sampler.info.num_samples = selector.k


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
