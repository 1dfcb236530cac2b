"""CLIP feature extraction: videos -> ``(T, D)`` float16 features sampled at ``fps``, in memory or on disk.

Pipeline: one background thread decodes (and resizes) the videos in order and fills a bounded queue with chunks
of ``batch_size`` frames; the calling thread takes them off and encodes each chunk as one batch. Decoding thus
runs ahead of encoding, also across video boundaries, and memory is bounded by the queue whatever the length.
With ``workers > 1`` (a GPU encodes faster than one thread decodes) the decoding runs in that many processes
instead, each on its own video and its own pipe, all feeding the one encoder; results still come out in input
order (see :mod:`stale_cli.features.extract.processes`).

On disk (docs/formats.md): ``<video_id>.npy`` float16 ``(T, D)``, row k = frame shown at ``k / fps`` seconds after
the first frame, and ``<video_id>.json`` (see :func:`sidecar`); the id is the file stem. Both are written
atomically, the sidecar last, so a video counts as done only when both exist: a rerun skips finished videos.

Modules: ``threads`` (the decoding thread, :func:`iter_features`, :func:`extract_video`), ``processes`` (the
decoding processes), ``steps`` (what both do per video), ``store`` (feature files on disk, :func:`extract_many`);
video ids are in :mod:`stale_cli.video_ids`.
"""

from stale_cli.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FEATURE_FPS, default_workers
from stale_cli.features.extract.steps import VideoResult, sidecar
from stale_cli.features.extract.store import ExtractSummary, cache_entry, extract_many, plan_features
from stale_cli.features.extract.threads import extract_video, iter_features

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_FEATURE_FPS", "ExtractSummary", "VideoResult", "cache_entry", "default_workers",
    "extract_many", "extract_video", "iter_features", "plan_features", "sidecar",
]
