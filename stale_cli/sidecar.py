"""The feature sidecar ``<video_id>.json`` beside each ``<video_id>.npy``, as one typed, frozen record.

Row k of the array is the frame shown at ``timestamps[0] + k / fps`` seconds. ``stale extract-features`` writes
every field below but the last two; a hand-made sidecar needs only ``fps``. :meth:`FeatureMeta.from_json` is the
one place a sidecar is read and checked, :meth:`FeatureMeta.to_json` the one place it is written: the keys on
disk are the field names, keys this version does not know are kept as read (``extra``) and written back.
:func:`write_features` and :func:`read_features` write and read the array with its sidecar.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from stale_cli.errors import DataError, InputError
from stale_cli.fileio import atomic_path, read_json, source_identity, write_json_atomic

FEATURE_FORMAT = 1  # version of the sidecar layout
MAX_FEATURE_BYTES = 1 << 36  # 64 GiB: a header claiming more is refused before anything is read
# Sane bounds of what a feature file describes: beyond them a sidecar is corrupt, not a real video.
MIN_FEATURE_FPS, MAX_FEATURE_FPS = 1e-3, 1000.0  # rows per second
MAX_DURATION = 1e7  # seconds (about 116 days)
# What extract-features always writes, and write_features requires: the fields a reader of the format relies on.
REQUIRED_TO_WRITE = ("fps", "timestamps", "duration", "source", "clip_model", "clip_weights", "num_frames")
# Sidecar timestamps may run this share (plus 1 s) past the recorded duration (rounding, a last frame's display
# time); further, they describe another video or another rate.
TIMESTAMP_SLACK = 1.05


@dataclass(frozen=True)
class FeatureMeta:
    fps: float  # rows per second
    timestamps: Optional[tuple[float, ...]] = None  # seconds from the first frame, per row
    duration: Optional[float] = None  # seconds from the first frame to the end of the last
    source: Optional[str] = None  # the video, resolved path
    source_size: Optional[int] = None  # bytes, when extracted: a rerun compares them with the file as it is
    source_mtime_ns: Optional[int] = None
    clip_model: Optional[str] = None  # open_clip architecture of the image tower
    clip_weights: Optional[str] = None  # pretrained tag, weights file path, or "random"
    clip_weights_sha256: Optional[str] = None  # content hash of a weights file (stale_cli.clip_identity)
    clip_activation: Optional[str] = None  # gelu | quick_gelu: what both towers ran with
    precision: Optional[str] = None  # dtype of CLIP's weights: fp32 | bf16 | fp16
    num_frames: Optional[int] = None  # frames decoded from the source
    num_rows: Optional[int] = None
    embed_dim: Optional[int] = None
    image_size: Optional[int] = None
    start_time: Optional[float] = None  # presentation time of the first frame in the file, seconds
    native_fps: Optional[float] = None
    frame_size: Optional[tuple[int, ...]] = None  # (width, height) as displayed
    rotation: Optional[int] = None  # degrees counter-clockwise applied before the resize
    mirrored: Optional[bool] = None  # frames were also flipped left-right (display matrix)
    decoder: Optional[str] = None
    warnings: Optional[tuple[str, ...]] = None
    stale_version: Optional[str] = None
    feature_format: Optional[int] = None
    # Only on features derived in memory, never written by extract-features: the rate of the features these rows
    # were resized (resize mode) or resampled (a checkpoint's rate) from.
    extracted_fps: Optional[float] = None
    resampled_from_fps: Optional[float] = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # unknown keys, as read

    @classmethod
    def from_json(cls, obj: Any, where: str = "feature sidecar") -> "FeatureMeta":
        """A sidecar's parsed JSON -> FeatureMeta; DataError (naming ``where``) for anything but an object with a
        sane ``fps``, or a known field of the wrong type or out of bounds."""
        if not isinstance(obj, Mapping) or "fps" not in obj:
            raise DataError(f"{where}: sidecar must be a JSON object with at least 'fps'")
        problems = _problems(obj)
        if problems:
            raise DataError(f"{where}: bad sidecar: {'; '.join(problems)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in obj.items() if k in known and v is not None}
        for k in ("timestamps", "warnings", "frame_size"):
            if isinstance(values.get(k), list):
                values[k] = tuple(values[k])
        values["fps"] = float(values["fps"])
        if values.get("timestamps") is not None:
            values["timestamps"] = tuple(float(t) for t in values["timestamps"])
        return cls(**values, extra={k: v for k, v in obj.items() if k not in known})

    @classmethod
    def of(cls, meta: "FeatureMeta | Mapping") -> "FeatureMeta":
        """``meta`` itself, or a sidecar given as its JSON object (a hand-made one) read with :meth:`from_json`."""
        return meta if isinstance(meta, FeatureMeta) else cls.from_json(meta)

    def to_json(self) -> dict:
        """The sidecar's JSON object: every field that is set (tuples as lists), then the unknown keys as read."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def replace(self, **changes) -> "FeatureMeta":
        return dataclasses.replace(self, **changes)

    @property
    def first_time(self) -> float:
        """Seconds of row 0 (0 when the sidecar gives no timestamps)."""
        return float(self.timestamps[0]) if self.timestamps else 0.0

    @property
    def source_fps(self) -> float:
        """The rate the features were extracted at, before any resize or resampling."""
        return float(self.extracted_fps if self.extracted_fps is not None else self.fps)

    @property
    def weights_id(self):
        """The CLIP weights that made the features (:class:`stale_cli.clip_identity.WeightsId`)."""
        from stale_cli.clip_identity import WeightsId

        return WeightsId(self.clip_weights, self.clip_weights_sha256)

    def missing_for_writing(self) -> list[str]:
        return [k for k in REQUIRED_TO_WRITE if getattr(self, k) is None]


def _finite(x, lo: float, hi: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi


def _problems(meta: Mapping) -> list[str]:
    """What is wrong with the known fields of a sidecar's JSON object (only ``fps`` is required)."""
    problems = []
    if not _finite(meta.get("fps"), MIN_FEATURE_FPS, MAX_FEATURE_FPS):
        problems.append(
            f"'fps' must be a number in [{MIN_FEATURE_FPS:g}, {MAX_FEATURE_FPS:g}], got {meta.get('fps')!r}"
        )
    if meta.get("duration") is not None and not _finite(meta["duration"], 0.0, MAX_DURATION):
        problems.append(f"'duration' must be seconds in [0, {MAX_DURATION:g}], got {meta['duration']!r}")
    stamps = meta.get("timestamps")
    if stamps is not None:
        if not isinstance(stamps, (list, tuple)) or not all(_finite(t, -MAX_DURATION, MAX_DURATION) for t in stamps):
            problems.append("'timestamps' must be a list of finite seconds")
        elif any(b < a for a, b in zip(stamps, stamps[1:])):
            k = next(k for k in range(1, len(stamps)) if stamps[k] < stamps[k - 1])
            problems.append(f"'timestamps' must not decrease (row {k} at {stamps[k]} s follows {stamps[k - 1]} s)")
        elif stamps and _finite(meta.get("duration"), 0.0, MAX_DURATION) and \
                stamps[-1] > TIMESTAMP_SLACK * meta["duration"] + 1.0:
            problems.append(f"'timestamps' run to {stamps[-1]} s, past the video's 'duration' of {meta['duration']} s")
    for key in ("num_rows", "num_frames", "embed_dim"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            problems.append(f"{key!r} must be a non-negative integer, got {value!r}")
    for key in ("clip_model", "clip_weights", "clip_weights_sha256", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(f"{key!r} must be a string, got {meta[key]!r}")
    return problems


def source_mismatch(meta: FeatureMeta, path: str | os.PathLike) -> Optional[str]:
    """None if the sidecar ``meta`` was made from the file at ``path`` as it is now; else what differs.

    Sidecars of older versions record only the path: for them the resolved path alone decides.
    """
    try:
        now = source_identity(path)
    except OSError as e:
        return f"source unreadable ({e.strerror or e})"
    if str(meta.source or "") != now["source"]:
        return f"made from {meta.source!r}"
    recorded = {"size": meta.source_size, "mtime_ns": meta.source_mtime_ns}
    changed = [k for k, v in recorded.items() if v is not None and v != now[f"source_{k}"]]
    return f"{' and '.join(changed)} of the source changed since" if changed else None


def read_sidecar(path: Path) -> FeatureMeta:
    """Read and check the sidecar at ``path``: one line naming it when it is missing, unreadable or bad."""
    return FeatureMeta.from_json(read_json(path, "sidecar"), str(path))


def write_features(npy_path: str | os.PathLike, features: np.ndarray, meta: FeatureMeta | Mapping) -> None:
    """Write ``<stem>.npy`` (float16, (T, D)) and then its ``<stem>.json`` sidecar (``meta``, or its JSON object).

    The sidecar is written last: a video counts as done only when both exist.
    """
    npy_path = Path(npy_path)
    meta = FeatureMeta.of(meta)
    missing = meta.missing_for_writing()
    assert not missing, f"sidecar lacks {missing}"
    with atomic_path(npy_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(features, dtype=np.float16))
    try:
        write_json_atomic(npy_path.with_suffix(".json"), meta.to_json())
    except BaseException:
        npy_path.unlink(missing_ok=True)  # nothing partial: an array without its sidecar would fail every reader
        raise


def read_features(npy_path: str | os.PathLike) -> tuple[np.ndarray, FeatureMeta]:
    """Read a feature file and its sidecar: ``(features float32 (T, D), sidecar)``."""
    npy_path = Path(npy_path)
    sidecar = npy_path.with_suffix(".json")
    if not npy_path.is_file():
        raise InputError(f"{npy_path}: no such feature file")
    if not sidecar.is_file():
        raise DataError(
            f"{npy_path}: feature file has no sidecar {sidecar.name}; "
            "features must be written by `stale extract-features` (or come with a .json giving at least fps)"
        )
    meta = read_sidecar(sidecar)
    shape = _npy_shape(npy_path)
    try:
        feats = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy_path}: corrupt feature file ({e})") from e
    assert feats.shape == shape, (feats.shape, shape)
    with np.errstate(over="ignore"):
        feats = feats.astype(np.float32)  # float64 values beyond float32's range become inf: caught below
    if not np.isfinite(feats).all():
        raise DataError(f"{npy_path}: feature file contains NaN or infinite values (as float32)")
    described = {"num_rows": (meta.num_rows, feats.shape[0]), "embed_dim": (meta.embed_dim, feats.shape[1])}
    wrong = [f"{k} {said!r}" for k, (said, real) in described.items() if said is not None and said != real]
    if meta.timestamps is not None and len(meta.timestamps) != feats.shape[0]:
        wrong.append(f"{len(meta.timestamps)} timestamps")
    if wrong:
        raise DataError(
            f"{sidecar}: the sidecar does not describe {npy_path.name} (array {feats.shape[0]} x {feats.shape[1]}; "
            f"sidecar: {', '.join(wrong)}); the pair comes from different runs: extract this video again"
        )
    return feats, meta


def _npy_shape(npy_path: Path) -> tuple:
    """Shape of a ``.npy`` array from its header alone, checked against the file's size before anything is read.

    A (T, D) float array with T, D >= 1 is required; a header claiming more data than the file holds (or more
    than :data:`MAX_FEATURE_BYTES`) is refused without allocating it.
    """
    try:
        with open(npy_path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            offset = f.tell()
        size = os.path.getsize(npy_path)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy_path}: corrupt feature file ({e})") from e
    if dtype.kind != "f":
        raise DataError(f"{npy_path}: expected floating-point features, got dtype {dtype}")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise DataError(f"{npy_path}: expected a (T, D) array with T, D >= 1, got shape {tuple(shape)}")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > MAX_FEATURE_BYTES or claimed != size - offset:
        raise DataError(
            f"{npy_path}: header claims a {shape[0]} x {shape[1]} {dtype} array ({claimed:,} bytes) but the file "
            f"holds {size - offset:,}; the file is corrupt or truncated, extract it again"
        )
    return tuple(shape)
