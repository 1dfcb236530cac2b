"""Cutting a video's feature sequence into model inputs of T snippets, and labelling them (paper §3.3, §4).

Two temporal modes (:class:`DataConfig`):

- ``"window"``: sliding windows of T feature rows with overlap; a snippet is one feature row (``1 / fps`` s).
  Used for THUMOS14 (T=256) and for users' long videos. The last window is shifted back to end at the last row,
  a video shorter than T gives one zero-padded window with ``valid_len < T``.
- ``"resize"``: the whole video linearly interpolated to T snippets of ``duration / T`` seconds each
  (ActivityNet, T=100); no padding. At detection only (:func:`cut_windows`), a video so long that its snippets
  would exceed ``max_snippet_seconds`` is instead interpolated to M > T snippets of at most that length and cut
  into overlapping windows of T of them (:func:`plan_detection_windows`): a 2-hour video is not 100 snippets of
  72 s. Segments then join across windows (``postprocess.WindowedVideo``).

Each window carries its :class:`~stale_cli.timeline.Timeline`, the only way between its snippet indices and
seconds. Used by training and by detection alike, so both see the same snippets.

Label assignment (§3.3, docs/model.md): a snippet whose *centre* lies in ``[start, end)`` of an instance takes that
instance's class and, as its column of the ``(T, T)`` mask target, that instance's binary mask (all snippets of
the window whose centre lies in the instance). An instance shorter than a snippet, containing no centre, gets the
one snippet holding its midpoint. Where instances overlap, the *shorter* one wins the shared snippets (otherwise
a short action inside a long one would vanish); each instance's own mask still spans its full extent. Snippets
of no instance are background (label K). Snippets of instances whose class is not in the training vocabulary
(zero-shot training: the unseen classes) are *ignored*: neither foreground nor background, left out of every
loss term (``ignore`` True), unless a training-class instance claims them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from stale_cli.errors import InputError
from stale_cli.sidecar import FeatureMeta
from stale_cli.timeline import Timeline

MODES = ("window", "resize")


@dataclass(frozen=True)
class DataConfig:
    mode: str = "window"  # "window" (sliding windows) | "resize" (whole video interpolated to T)
    num_snippets: int = 256  # T (paper §4: 256 THUMOS14, 100 ActivityNet); must equal ModelConfig.num_snippets
    overlap: float = 0.5  # window mode: fraction of T shared by consecutive windows (stride = T * (1 - overlap))
    # Window mode, training only: share of windows holding no foreground that are kept. Long THUMOS14 videos are
    # mostly background; windows with actions already hold plenty of background snippets, so most of the empty
    # windows are dropped (chosen once per run from the seed) to keep epochs short and classes balanced.
    empty_window_keep: float = 0.1
    # Window mode, training only: each time a training window is read, its start moves by a random number of rows
    # up to this fraction of the stride either way (within the video). A small dataset (THUMOS14 has 200 training
    # videos) otherwise shows the model the same few hundred windows every epoch, and it memorises them.
    jitter: float = 0.5
    # Resize mode, detection only: the longest snippet, in seconds. A video longer than T times this is resampled
    # to snippets of at most this length and cut into windows of T snippets overlapping by half (LONG_OVERLAP)
    # instead of being squeezed into T. 3 s: with T=100, videos up to 5 minutes are resized whole exactly as in
    # training (ActivityNet's videos average about 2 minutes, 1.2 s snippets);
    # longer ones get windows of 5 minutes, which hold an instance of up to 2.5 minutes whole.
    max_snippet_seconds: float = 3.0
    # Share of a video's mean (L2-normalised) feature removed from every row before the model sees it, rows then
    # renormalised (0: the features as extracted, what checkpoints before 0.3 were trained on). What every frame of
    # a video shares (scene, lighting, CLIP's modality gap) says nothing about when an action happens; removed, the
    # action's own direction is what the classifier compares with the text (the training-free mode does the same).
    video_mean: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"data mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.num_snippets < 2:
            raise InputError(f"num_snippets must be at least 2, got {self.num_snippets}")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 <= self.video_mean <= 1.0:
            raise InputError(f"video_mean must be in [0, 1], got {self.video_mean}")
        if not 0.0 <= self.jitter <= 1.0:
            raise InputError(f"jitter must be in [0, 1], got {self.jitter}")
        if not 0.0 <= self.empty_window_keep <= 1.0:
            raise InputError(f"empty_window_keep must be in [0, 1], got {self.empty_window_keep}")
        if not self.max_snippet_seconds > 0:
            raise InputError(f"max_snippet_seconds must be positive, got {self.max_snippet_seconds}")

    @property
    def stride(self) -> int:
        return max(1, round(self.num_snippets * (1.0 - self.overlap)))


# Overlap of the windows of a long video in resize mode (detection): half, so that every instance shorter than
# half a window is whole in one of them.
LONG_OVERLAP = 0.5


def center_video(features: np.ndarray, share: float) -> np.ndarray:
    """``features`` (N, D) of one whole video -> rows L2-normalised, ``share`` x their mean removed, renormalised
    (DataConfig.video_mean); unchanged when ``share`` is 0. Training and detection call it alike."""
    if share <= 0 or features.shape[0] < 2:  # one row: nothing shared with other rows to remove
        return features
    x = features.astype(np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    x = x - share * x.mean(axis=0, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(features.dtype)


@dataclass(frozen=True)
class Window:
    # Window mode: first feature row of the window. Resize mode: first snippet of the window on the video's
    # resized snippets (detection_grid), 0 for a video resized whole.
    start_row: int
    valid_len: int  # snippets [0, valid_len) are real, the rest padding
    timeline: Timeline  # the window's T snippets (padding included) in seconds


def feature_timeline(meta: FeatureMeta | Mapping, num_rows: int) -> Timeline:
    """Timeline of a feature file's rows: row k is the frame at ``timestamps[0] + k / fps`` (the sidecar's
    contract, docs/formats.md), the centre of its snippet. ``meta``: the sidecar (or its JSON object) here and below."""
    meta = FeatureMeta.of(meta)
    return Timeline(origin=meta.first_time - 0.5 / meta.fps, step=1.0 / meta.fps, num=num_rows)


def video_duration(meta: FeatureMeta | Mapping, num_rows: int) -> float:
    """The video's duration in seconds: the sidecar's, else one row interval after the last row's frame."""
    meta = FeatureMeta.of(meta)
    if meta.duration is not None and meta.duration > 0:
        return float(meta.duration)
    src = feature_timeline(meta, num_rows)
    return src.end + 0.5 * src.step


def plan_windows(num_rows: int, meta: FeatureMeta | Mapping, cfg: DataConfig) -> list[Window]:
    """The windows covering a video of ``num_rows`` feature rows, in time order."""
    T = cfg.num_snippets
    src = feature_timeline(meta, num_rows)
    if cfg.mode == "resize":
        return [Window(0, T, Timeline(origin=0.0, step=video_duration(meta, num_rows) / T, num=T))]
    starts = list(range(0, max(num_rows - T, 0) + 1, cfg.stride))
    if starts[-1] + T < num_rows:
        starts.append(num_rows - T)  # the last window ends at the last row
    return [
        Window(w, min(T, num_rows - w), Timeline(origin=float(src.to_seconds(w)), step=src.step, num=T))
        for w in starts
    ]


def detection_grid(num_rows: int, meta: FeatureMeta | Mapping, cfg: DataConfig) -> Timeline:
    """The snippets, in seconds, on which :func:`plan_detection_windows` lays its windows: the feature rows (window
    mode); the T snippets of the whole video (resize mode), or for a video longer than ``T *
    max_snippet_seconds`` its M = ceil(duration / max_snippet_seconds) snippets of ``duration / M`` s."""
    if cfg.mode != "resize":
        return feature_timeline(meta, num_rows)
    duration = video_duration(meta, num_rows)
    T = cfg.num_snippets
    M = T if duration <= T * cfg.max_snippet_seconds else int(np.ceil(duration / cfg.max_snippet_seconds))
    return Timeline(origin=0.0, step=duration / M, num=M)


def plan_detection_windows(num_rows: int, meta: FeatureMeta | Mapping, cfg: DataConfig) -> list[Window]:
    """The windows of a video at detection, in time order, on :func:`detection_grid`. Window mode and a video that
    fits resize mode's bound: those of :func:`plan_windows` (training's). A longer video in resize mode: windows of
    T grid snippets (each interpolated from the features like a whole video), overlapping by ``LONG_OVERLAP``, the
    last shifted back to end at the video's end."""
    grid = detection_grid(num_rows, meta, cfg)
    T = cfg.num_snippets
    if cfg.mode != "resize" or grid.num == T:
        return plan_windows(num_rows, meta, cfg)
    stride = max(1, round(T * (1.0 - LONG_OVERLAP)))
    starts = list(range(0, grid.num - T + 1, stride))
    if starts[-1] + T < grid.num:
        starts.append(grid.num - T)
    return [Window(w, T, Timeline(origin=float(grid.to_seconds(w)), step=grid.step, num=T)) for w in starts]


def shifted(window: Window, num_rows: int, shift: int, cfg: DataConfig) -> Window:
    """``window`` moved by ``shift`` rows (window mode), kept inside the video's rows."""
    T = cfg.num_snippets
    start = int(np.clip(window.start_row + shift, 0, max(num_rows - T, 0)))
    tl = window.timeline
    origin = tl.origin + (start - window.start_row) * tl.step
    return Window(start, min(T, num_rows - start), Timeline(origin, tl.step, T))


def interpolate_rows(features: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rows of ``features`` (N, D) linearly interpolated at continuous row positions ``pos`` (M,) -> (M, D) float32.

    Positions outside [0, N - 1] take the first or last row.
    """
    N = features.shape[0]
    pos = np.clip(np.asarray(pos, dtype=np.float64), 0.0, N - 1)  # (M,)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, N - 1)
    w = (pos - lo)[:, None].astype(np.float32)  # (M, 1)
    return features[lo].astype(np.float32) * (1 - w) + features[hi].astype(np.float32) * w  # (M, D)


def window_features(features: np.ndarray, meta: FeatureMeta | Mapping, window: Window, cfg: DataConfig) -> np.ndarray:
    """The (T, D) float32 input of one window: rows zero-padded (window mode) or interpolated (resize mode)."""
    N, D = features.shape
    T = cfg.num_snippets
    if cfg.mode == "resize":
        src = feature_timeline(meta, N)
        # Continuous source row at each target snippet centre; row k is centred at index k + 0.5.
        return interpolate_rows(features, src.to_index(window.timeline.centres()) - 0.5)  # (T, D)
    out = np.zeros((T, D), dtype=np.float32)
    out[: window.valid_len] = features[window.start_row : window.start_row + window.valid_len]
    return out


def cut_windows(features: np.ndarray, meta: FeatureMeta | Mapping, cfg: DataConfig) -> list[tuple[Window, np.ndarray]]:
    """Every window of a (T_total, D) feature array with its (T, D) input; for detection
    (:func:`plan_detection_windows`)."""
    meta = FeatureMeta.of(meta)
    return [(w, window_features(features, meta, w, cfg)) for w in plan_detection_windows(features.shape[0], meta, cfg)]


def snippets_inside(timeline: Timeline, valid: np.ndarray, start: float, end: float) -> np.ndarray:
    """Snippets of an instance: centre in [start, end), or the one holding its midpoint when no centre is inside."""
    centres = timeline.centres()  # (T,) seconds
    inside = (centres >= start) & (centres < end) & valid  # (T,)
    if not inside.any():
        mid = int(np.floor(timeline.to_index(0.5 * (start + end))))
        if 0 <= mid < valid.sum():
            inside[mid] = True
    return inside


def assign_labels(
    timeline: Timeline, valid_len: int, instances: list[tuple[float, float, int]], num_classes: int,
    unseen: list[tuple[float, float]] = (),
) -> dict[str, np.ndarray]:
    """Targets of one window from instances ``(start_s, end_s, class_index)`` (classes 0..K-1 only).

    ``unseen``: ``(start_s, end_s)`` of instances of classes outside the vocabulary; their snippets are ignored.
    Returns numpy arrays: ``labels`` (T,) int64 in [0, K], K = background; ``also`` (T,) int64: a second
    training class whose instance also covers the snippet, K where none (THUMOS14 labels every CliffDiving instance
    Diving too, and cricket bowling runs into the shot); ``masks`` (T, T) float32 whose column t is the instance
    mask of snippet t (zeros for background snippets; an ignored snippet is in no training-class instance, so its
    row is zero too); ``fg`` (T,) float32; ``valid`` (T,) bool; ``ignore`` (T,) bool.
    """
    T, K = timeline.num, num_classes
    valid = np.arange(T) < valid_len  # (T,)
    labels = np.full(T, K, dtype=np.int64)
    masks = np.zeros((T, T), dtype=np.float32)
    # Longest first, so a shorter overlapping instance overwrites the snippets it shares (the shorter wins).
    spans = []
    for start, end, cls in sorted(instances, key=lambda x: x[1] - x[0], reverse=True):
        assert 0 <= cls < K, f"class index {cls} outside the vocabulary of {K}"
        inside = snippets_inside(timeline, valid, start, end)  # (T,)
        labels[inside] = cls
        masks[:, inside] = inside[:, None]  # column t = this instance's mask
        spans.append((inside, cls))
    also = np.full(T, K, dtype=np.int64)
    for inside, cls in spans:  # the other class of a snippet in instances of two classes (the shortest other)
        also[inside & (labels != cls)] = cls
    ignore = np.zeros(T, dtype=bool)
    for start, end in unseen:
        ignore |= snippets_inside(timeline, valid, start, end)
    ignore &= labels == K  # a training-class instance keeps the snippets it shares with an unseen one
    fg = (labels != K).astype(np.float32)
    return {"labels": labels, "also": also, "masks": masks, "fg": fg, "valid": valid, "ignore": ignore}
