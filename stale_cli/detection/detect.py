"""Detection: inputs (videos or feature files) -> segments in seconds, with a label and a score.

:class:`Detector` loads everything once for a whole batch (the STALE checkpoint or the CLIP text features of the
training-free mode, and the CLIP image encoder only when some input is a video) and then detects one input at a
time; :func:`detect_batch` runs it over a list of inputs, hands each finished video to a writer and collects
per-input failures so a batch goes on past a bad file.

Two modes:

- ``stale``: a trained STALE checkpoint. Features are cut into windows with the checkpoint's own ``DataConfig``
  (``data.windows.cut_windows``; a long video in resize mode gets several windows of short snippets), the model
  gives per-snippet probabilities (T, K+1) (``model.stale.detection_probabilities``) and masks (T, T) per window,
  ``postprocess.WindowedVideo`` turns the windows into candidates in seconds (runs longer than a window joined
  across window edges, fragments cut by an edge demoted), and ``postprocess.finalize`` merges them (Soft-NMS,
  top-k, clipped to the video).
- ``clip``: the training-free mode of :mod:`stale_cli.detection.clipmode`: probabilities on the whole video at once (one
  background level per video), then ``postprocess.segments_from_curve`` on the whole video (no window, so no cap
  on a segment's length) and the same ``finalize``.

Feature rate: a checkpoint was trained on features at ``feature_fps``; features at another rate (a feature file
extracted at another ``--fps``) are **resampled** to it by linear interpolation along time, with a log line,
because its windows of T snippets and its mask localizer's kernels are in units of snippets: fed at another rate,
the model would see actions stretched or squeezed. Videos are sampled at the checkpoint's rate directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from stale_cli import __version__
from stale_cli.clip_identity import RANDOM, mismatch_hint
from stale_cli.defaults import DEFAULT_FEATURE_FPS
from stale_cli.detection.clipmode import MODE_NAME as CLIP_MODE
from stale_cli.detection.clipmode import (ClipModeConfig, class_text_features, ensemble, normalize_rows,
                                          snippet_directions, snippet_probabilities)
from stale_cli.detection.detections import Segment, VideoDetections
from stale_cli.detection.reading import ReadingConfig, reading_parents
from stale_cli.errors import (CheckpointError, DataError, InputError, ResourceError, StaleError, WeightsError,
                              first_line, out_of_memory)
from stale_cli.fileio import source_identity
from stale_cli.model.data.windows import (DataConfig, center_video, cut_windows, detection_grid, feature_timeline,
                                    interpolate_rows, video_duration)
from stale_cli.model.postprocess import DetectConfig, Segments, WindowedVideo, finalize, segments_from_curve
from stale_cli.sidecar import MAX_FEATURE_FPS, MIN_FEATURE_FPS, FeatureMeta, read_features, write_features
from stale_cli.text import unicode_name
from stale_cli.textcache import cached_rows
from stale_cli.vocab import class_to_text, distractors, name_key

log = logging.getLogger(__name__)

STALE_MODE = "stale"
MODES = (STALE_MODE, CLIP_MODE)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# STALE mode, who reads a name the checkpoint was not trained on: "both" (the default), a snippet shows the name
# when either "clip", weighed by the context foreground L_ctx, or "foreground" says so (their noisy-OR), with
# segments from the model's masks and from the whole-video curve; "clip", frozen CLIP alone, as the training-free
# mode does (segments from its curve); "foreground", frozen CLIP says which name (Eq. 7's class posterior replaced
# by its, prior weight 1), the model says where (its foreground and masks); "stale", the trained model, its
# classifier fused with frozen CLIP's prior as for its own names.
NEW_NAMES = ("both", "clip", "foreground", "stale")
WINDOW_BATCH = 8  # STALE windows per forward pass
DEFAULT_CLIP_MODEL = "ViT-B-16"
# The training-free mode computes probabilities and segments on the whole video; DetectConfig.max_candidates
# applies per stretch of num_snippets snippets, not per video.
CLIP_WINDOWS = DataConfig(mode="window", num_snippets=256, overlap=0.5)


def default_weights_dir() -> Path:
    """``$STALE_WEIGHTS_DIR``, else ``./weights`` when it exists, else ``weights/`` of the repository checkout
    beside the package (an editable install); a plain ``pip install .`` has only the first two."""
    env = os.environ.get("STALE_WEIGHTS_DIR")
    if env:
        return Path(env)
    here = Path.cwd() / "weights"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "weights"


def choose_mode(
    mode: Optional[str], checkpoint: Optional[str | os.PathLike], weights_dir: Optional[Path] = None
) -> tuple[str, Optional[Path]]:
    """Which mode runs, and with which checkpoint.

    ``--checkpoint`` wins; else the one checkpoint in ``weights/`` when there is exactly one; else the
    training-free mode. ``--mode stale`` without any checkpoint, or ``--mode clip`` with ``--checkpoint``, is an
    error; ``--mode clip`` ignores ``weights/``.
    """
    if mode is not None and mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if checkpoint is not None:
        if mode == CLIP_MODE:
            raise InputError("--mode clip is the training-free mode; it takes no --checkpoint")
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return STALE_MODE, path
    if mode == CLIP_MODE:
        return CLIP_MODE, None
    weights_dir = weights_dir or default_weights_dir()
    found = stale_checkpoints(weights_dir)
    if len(found) == 1:
        log.info("using the checkpoint in %s: %s", weights_dir, found[0].name)
        return STALE_MODE, found[0]
    if mode == STALE_MODE:
        why = f"{len(found)} checkpoints in {weights_dir}" if found else f"no checkpoint in {weights_dir}"
        raise CheckpointError(f"--mode stale needs a trained checkpoint ({why}); pass --checkpoint PATH")
    if found:
        log.warning("%d checkpoints in %s; pass --checkpoint to pick one. Using the training-free mode", len(found), weights_dir)
    return CLIP_MODE, None


def stale_checkpoints(weights_dir: Path) -> list[Path]:
    """The STALE checkpoints directly in ``weights_dir``; other ``.pt``/``.pth``/``.ckpt`` files (a ResNet
    kept there) are ignored with a debug line."""
    from stale_cli.model.checkpoint import is_stale_checkpoint

    if not weights_dir.is_dir():
        return []
    found = []
    for p in sorted(weights_dir.glob("*")):
        if p.suffix not in CHECKPOINT_SUFFIXES or not p.is_file():
            continue
        if is_stale_checkpoint(p):
            found.append(p)
        else:
            log.debug("%s: not a stale checkpoint; ignored", p)
    return found


# Largest array a feature file may be resampled to (1M rows of 512 floats: 72 hours at 4 fps), so a sidecar with a
# tiny fps cannot make a small file ask for tens of GiB.
MAX_RESAMPLED_BYTES = 2 << 30


def resample_features(features: np.ndarray, meta: FeatureMeta, fps: float) -> tuple[np.ndarray, FeatureMeta]:
    """Linear interpolation of (N, D) features sampled at ``meta.fps`` to ``fps`` rows per second.

    Row k of the result is the frame at ``t0 + k / fps``; the result covers the same span as the source.
    """
    src_fps = meta.fps
    N, D = features.shape
    t0 = meta.first_time
    M = max(1, int(round(N * fps / src_fps)))
    if M * D * 4 > MAX_RESAMPLED_BYTES:  # float32 (M, D), before it is allocated
        raise DataError(
            f"resampling its {N} rows at {src_fps:g} fps to {fps:g} fps would make {M} rows "
            f"({M * D * 4 / 2**30:.1f} GiB); its sidecar's fps is likely wrong: extract the features again "
            f"(at --fps {fps:g})")
    out = interpolate_rows(features, np.arange(M) * (src_fps / fps))  # (M, D): source row at each new row's time
    return out, meta.replace(fps=float(fps), timestamps=tuple(t0 + k / fps for k in range(M)), resampled_from_fps=src_fps)


def _same_clip(a: str, b: str) -> bool:
    """Model names equal up to open_clip's ``-quickgelu`` variant (same weights, same embedding). A name that is
    not recorded is the caller's to handle (:meth:`Detector._check_clip`)."""
    strip = lambda s: s.lower().removesuffix("-quickgelu")  # noqa: E731
    return strip(a) == strip(b)


def _weights_identity(weights) -> object:
    """A pretrained tag as it is; a local weights file by path, size and mtime (a retrained file is new)."""
    try:
        return source_identity(weights) if weights and Path(str(weights)).is_file() else str(weights)
    except OSError:
        return str(weights)


@dataclass
class DetectSettings:
    """What a run of ``stale detect`` is asked for (besides its inputs)."""

    classes: list[str]
    mode: Optional[str] = None  # None: choose (see choose_mode)
    checkpoint: Optional[Path] = None
    clip_model: Optional[str] = None  # None: the checkpoint's, or ViT-B-16 in the training-free mode
    clip_weights: Optional[str] = "openai"
    fps: Optional[float] = None  # video sampling rate; None: the checkpoint's, or extract's default
    min_score: Optional[float] = None
    top_k: Optional[int] = None
    batch_size: int = 64
    cache_features: Optional[Path] = None
    weights_dir: Optional[Path] = None
    precision: str = "auto"  # CLIP's weights on videos: auto | fp32 | bf16 | fp16 (clip_backbone.resolve_precision)
    clip_cfg: ClipModeConfig = field(default_factory=ClipModeConfig)
    # Score snippets against other names too (vocab.distractors: the checkpoint's training names and the shipped
    # generic action names), reporting only the ones asked for. False: the names asked for are all there is.
    distractors: bool = True
    scoring: str = "open"  # STALE mode: "open" or "paper" (Eq. 7's softmax over K+1), see detection_probabilities
    prior_weight: Optional[float] = None  # None: the detect config's (DetectConfig.prior_weight)
    # STALE mode: who reads a name the checkpoint was not trained on (NEW_NAMES; the checkpoint's own names always
    # go through the trained model). On benchmarks/zero_shot.py the trained classifier does not carry to new names,
    # and the model's "where" does only when actions share a class-agnostic look; "both" keeps frozen CLIP's
    # reading where the model's "where" fails and adds the model's where it carries (BENCHMARKS.md "Zero-shot").
    new_names: str = "both"
    # Inference settings before min_score/top_k; None: the checkpoint's preset (STALE mode), else DetectConfig().
    detect_config: Optional[DetectConfig] = None
    # The ranked list reduced for a person (stale_cli.detection.reading: score floor, overlapping alternatives,
    # per-class limit); None: the full ranked list that mAP needs (stale detect --all, zero-shot, the benchmarks).
    reading: Optional[ReadingConfig] = None


class Detector:
    """Everything loaded once for a batch; :meth:`detect` handles one input path."""

    def __init__(self, settings: DetectSettings, device="cpu", need_video: bool = False, clip=None):
        """``clip``: an already loaded ClipBackbone (tests, benchmarks); else loaded here when needed."""
        import torch

        self.settings = settings
        self.device = torch.device(device)
        self.classes = list(settings.classes)
        self.mode, self.checkpoint = choose_mode(settings.mode, settings.checkpoint, settings.weights_dir)
        self._unidentified: set[str] = set()  # what older feature files lacked, said once per run
        self.model = None
        self.info = None  # CheckpointInfo in STALE mode
        self.data_cfg = CLIP_WINDOWS
        self.detect_cfg = settings.detect_config or DetectConfig()

        if self.mode == STALE_MODE:
            self._load_stale()
            clip_model = self.info.clip_model
            if settings.clip_model is not None and not _same_clip(clip_model, settings.clip_model):
                raise CheckpointError(
                    f"{self.checkpoint}: trained on {clip_model} features but --clip-model {settings.clip_model} "
                    "was given; drop --clip-model or use a checkpoint of that model"
                )
            self.clip_model_name = clip_model
            self.fps = self.info.feature_fps
            if settings.fps is not None and not math.isclose(settings.fps, self.fps):
                log.warning("--fps %.3g ignored: the checkpoint was trained at %.3g features per second", settings.fps, self.fps)
        else:
            self.clip_model_name = settings.clip_model or DEFAULT_CLIP_MODEL
            # Rate videos are sampled at; feature files keep their own rate in this mode.
            self.fps = settings.fps or (DEFAULT_FEATURE_FPS if need_video else None)
        overrides = {}
        if settings.min_score is not None:
            overrides["min_score"] = float(settings.min_score)
        if settings.top_k is not None:
            overrides["top_k"] = int(settings.top_k)
        if settings.prior_weight is not None:
            overrides["prior_weight"] = float(settings.prior_weight)
        if overrides:
            self.detect_cfg = dataclasses.replace(self.detect_cfg, **overrides)
        log.info(
            "mode: %s (%s)",
            self.mode,
            f"STALE checkpoint {self.checkpoint}" if self.mode == STALE_MODE else "training-free CLIP similarity",
        )

        self.clip = clip
        if self.clip is None and (need_video or self.mode == CLIP_MODE):
            from stale_cli.features.clip_backbone import load_clip

            self.clip = load_clip(self.clip_model_name, settings.clip_weights, device=self.device,
                                  precision=settings.precision)
        if self.mode == STALE_MODE and self.clip is not None:  # videos: their features must be the checkpoint's
            self._check_checkpoint_clip(self.clip)
        from stale_cli.model.stale import SCORINGS

        if settings.scoring not in SCORINGS:
            raise InputError(f"--scoring must be one of {', '.join(SCORINGS)}, not {settings.scoring!r}")
        paper = self.mode == STALE_MODE and settings.scoring == "paper"
        trained = list(self.info.class_names) if self.info is not None else []
        # The names asked for come first: rows [0, K) of every text matrix and probability array below.
        self.competitors = [] if paper else distractors(self.classes, trained, settings.distractors)
        names = self.classes + self.competitors
        self.prior_text = None  # (R, C) frozen CLIP's ensembled text of every name, STALE mode
        self.new_idx: list[int] = []  # STALE mode: the names asked whose class frozen CLIP reads (NEW_NAMES)
        if settings.new_names not in NEW_NAMES:
            raise InputError(f"--new-names must be one of {', '.join(NEW_NAMES)}, not {settings.new_names!r}")
        if self.mode == STALE_MODE:
            self.text = self._stale_text(names)  # (R+1, C)
            fits = self.info.feature_dim == self.text.shape[1]  # CLIP features: frozen CLIP can read them
            if not paper and settings.new_names != "stale" and fits:
                trained_keys = {name_key(n) for n in trained}
                self.new_idx = [i for i, n in enumerate(self.classes) if name_key(n) not in trained_keys]
            if not paper and fits and (self.detect_cfg.prior_weight > 0 or self.new_idx):
                self.prior_text = self._frozen_text(names)
        else:
            self.text = self._clip_text(self.clip, names)  # (R, C)
        if self.competitors:
            log.info("scoring against %d other action names too (--no-distractors turns this off)",
                     len(self.competitors))

    # ---- text ----------------------------------------------------------------------------------------------
    @staticmethod
    def _cached_text(identity: dict, names: list[str], encode) -> np.ndarray:
        return cached_rows(identity, names, encode)

    def _stale_text(self, names: list[str]):
        """Eq. (2) rows of ``names`` with the checkpoint's learned prompt, then its background row: (R+1, C)."""
        import torch

        def encode(ns: list[str]) -> np.ndarray:
            with torch.inference_mode():
                return self.model.encode_classes(ns)[:-1].float().cpu().numpy()  # (n, C)

        rows = self._cached_text({"prompt": source_identity(self.checkpoint)}, names, encode)  # (R, C)
        with torch.inference_mode():
            background = self.model.encode_classes(names[:1])[-1:]  # (1, C): the same for any list
        return torch.cat([torch.from_numpy(rows).to(background), background], dim=0)  # (R+1, C)

    def _frozen_text(self, names: list[str]) -> np.ndarray:
        """Frozen CLIP's prompt-ensembled text of ``names`` (R, C), as the training-free mode reads them: with the
        checkpoint's tower when training kept it frozen, else with CLIP's own tower, loaded from the weights the
        checkpoint records. A tower fine-tuned on the training names reads new names badly (BENCHMARKS.md
        "Zero-shot", the overfitting check); it is used only when those weights cannot be loaded here (warned)."""
        frozen = self.info.model_config.freeze_text_encoder
        clip = None if frozen else self._checkpoint_clip()
        if clip is not None:
            log.info("names read by frozen CLIP: %s's own text tower (the checkpoint's was fine-tuned)", clip.name)
            return self._clip_text(clip, names)
        # A frozen tower is CLIP's own: its rows are shared by every checkpoint trained from those weights.
        tower = ({"clip": self.info.clip_model, "weights": _weights_identity(self.info.clip_weights),
                  "activation": self.info.clip_activation} if frozen
                 else {"checkpoint": source_identity(self.checkpoint)})
        return self._cached_text({"prior": tower, "templates": list(self.settings.clip_cfg.templates)}, names,
                                 self._prior_rows)

    def _clip_text(self, clip, names: list[str]) -> np.ndarray:
        """``clip``'s prompt-ensembled text of ``names`` (R, C), the training-free mode's, cached per CLIP."""
        cfg = self.settings.clip_cfg
        ident = {"clip": clip.name, "weights": _weights_identity(clip.weights), "activation": clip.activation,
                 "precision": clip.precision, "templates": list(cfg.templates)}
        return self._cached_text(ident, names, lambda ns: class_text_features(clip, ns, cfg))

    def _checkpoint_clip(self):
        """The CLIP the checkpoint was trained from: the one already loaded for videos, else loaded now from the
        weights the checkpoint records (or --clip-weights, when those are not here); None, with a warning, when
        neither can be had."""
        if self.clip is not None:
            return self.clip
        from stale_cli.features.clip_backbone import load_clip

        recorded = self.info.clip_weights
        reasons = []
        if self.info.weights_id.label in (None, "", RANDOM):
            reasons.append("it was trained from randomly initialised CLIP weights, which cannot be rebuilt")
        else:
            for weights in dict.fromkeys(w for w in (recorded, self.settings.clip_weights) if w):
                try:
                    clip = load_clip(self.info.clip_model, weights, device=self.device,
                                     precision=self.settings.precision)
                except WeightsError as e:
                    reasons.append(first_line(e))
                    continue
                if clip.weights_id.same_as(self.info.weights_id) is False:
                    reasons.append(f"--clip-weights {weights} are not the weights it was trained from ({recorded})")
                    continue
                self._check_checkpoint_clip(clip)
                self.clip = clip
                return clip
        log.warning("%s: its text tower was fine-tuned (--tune-text-encoder) and CLIP's own cannot be loaded (%s); "
                    "names it was not trained on are read with the fine-tuned tower, which reads them poorly: pass "
                    "--clip-weights with the CLIP weights it was trained from", self.checkpoint.name, reasons[0])
        return None

    def _check_checkpoint_clip(self, clip) -> None:
        """Refuse a CLIP whose features would not match the checkpoint's: another activation or other weights."""
        if clip.activation != self.info.clip_activation:
            raise CheckpointError(
                f"{self.checkpoint}: its text encoder runs {self.info.clip_activation} but CLIP {clip.name} "
                f"with --clip-weights {clip.weights} runs {clip.activation}; video features would not "
                "match the text: use the CLIP weights the checkpoint was trained with"
            )
        if clip.weights_id.same_as(self.info.weights_id) is False:
            raise CheckpointError(
                f"{self.checkpoint}: trained from CLIP weights {self.info.weights_id} but --clip-weights gives "
                f"{clip.weights_id}; video features would not match the text: pass --clip-weights "
                f"{self.info.clip_weights}")

    def _prior_rows(self, names: list[str]) -> np.ndarray:
        """Frozen CLIP's prompt-ensembled text of ``names`` (as the training-free mode's), unit rows (n, C)."""
        import torch

        templates = self.settings.clip_cfg.templates
        texts = [t.format(class_to_text(n)) for n in names for t in templates]
        with torch.inference_mode():
            e = torch.cat([self.model.text_encoder.encode_sentences(texts[i : i + 256])
                           for i in range(0, len(texts), 256)]).cpu().numpy()  # (n * P, C)
        return ensemble(e, len(names))  # (n, C)

    # ---- loading -------------------------------------------------------------------------------------------
    def _load_stale(self) -> None:
        from stale_cli.model.checkpoint import load_checkpoint

        self.model, self.info = load_checkpoint(self.checkpoint, self.device)
        self.data_cfg = self.info.data_config
        if self.settings.detect_config is None:
            self.detect_cfg = self.info.detect_config  # its preset's Soft-NMS sigma and top k
        if not MIN_FEATURE_FPS <= self.info.feature_fps <= MAX_FEATURE_FPS:  # NaN too
            raise CheckpointError(
                f"{self.checkpoint}: checkpoint records no usable feature rate (feature_fps {self.info.feature_fps})"
            )
        log.info(
            "checkpoint %s: %s features at %.3g fps, trained on %d classes, %d epochs",
            self.checkpoint.name, self.info.clip_model, self.info.feature_fps, len(self.info.class_names), self.info.epoch,
        )

    def run_key(self) -> dict:
        """Everything that decides a video's segments, for :mod:`stale_cli.detection.resume` to tell a rerun's videos
        from those of a run with other settings (the checkpoint by identity, so a retrained file counts as new)."""
        key = dict(self.metadata(), detect_config=dataclasses.asdict(self.detect_cfg))
        key.update(clip_mode=dataclasses.asdict(self.settings.clip_cfg) if self.mode == CLIP_MODE else None)
        key.update(checkpoint=source_identity(self.checkpoint) if self.checkpoint else None)
        return key

    def metadata(self) -> dict:
        """Run metadata for output files."""
        return {
            "mode": self.mode,
            "mode_description": "trained STALE checkpoint" if self.mode == STALE_MODE
            else "training-free CLIP snippet-text similarity (baseline)",
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "classes": self.classes,
            "fps": self.fps,
            "clip_model": self.clip_model_name,
            "clip_weights": getattr(self.clip, "weights", None) or self.settings.clip_weights,
            "clip_activation": getattr(self.clip, "activation", None)
            or (self.info.clip_activation if self.info is not None else None),
            "precision": getattr(self.clip, "precision", None),
            "detect_config": dataclasses.asdict(self.detect_cfg),  # Soft-NMS sigma, top k, thresholds used
            # null: the full ranked list (detect --all); else how it was reduced for a person
            # (stale_cli.detection.reading)
            "reading": None if self.settings.reading is None else dataclasses.asdict(self.settings.reading),
            "scoring": "paper" if self.mode == STALE_MODE and self.settings.scoring == "paper" else "open",
            "distractors": len(self.competitors),  # other names each snippet was scored against
            # STALE mode: names the checkpoint was not trained on, whose class frozen CLIP reads, and how (NEW_NAMES)
            "scored_by_frozen_clip": [self.classes[i] for i in self.new_idx],
            "new_names": self.settings.new_names if self.mode == STALE_MODE else None,
            "stale_version": __version__,
        }

    # ---- one input -----------------------------------------------------------------------------------------
    def load_input(
        self, path: Path, video_id: str, progress: Optional[Callable[[int], None]] = None
    ) -> tuple[np.ndarray, FeatureMeta]:
        """Features ``(N, D)`` float32 and their sidecar for a feature file or a video (extracted in memory)."""
        if path.suffix.lower() == ".npy":
            return read_features(path)
        if self.clip is None:
            raise InputError(f"{path}: a video, but the CLIP image encoder was not loaded")
        from stale_cli.features.extract import cache_entry, extract_video

        fps = self.fps or DEFAULT_FEATURE_FPS
        cached = None
        if self.settings.cache_features is not None:  # the rule of extract-features: never replace others' files
            cached, state = cache_entry(Path(self.settings.cache_features), path, video_id, fps, self.clip, log.warning)
            if state == "done":
                try:
                    feats, meta = read_features(cached)
                    log.info("%s: reusing cached features %s", path.name, cached)
                    return feats, meta
                except DataError as e:  # a damaged cache entry of this video is redone, not a failed input
                    log.warning("%s: cached features unusable (%s); extracting again", path.name, e)
        feats, meta = extract_video(path, self.clip, fps=fps, batch_size=self.settings.batch_size, on_frames=progress)
        if cached is not None:
            write_features(cached, feats, meta)
        return np.asarray(feats, dtype=np.float32), meta

    def detect(
        self, path: Path, video_id: Optional[str] = None, progress: Optional[Callable[[int], None]] = None
    ) -> VideoDetections:
        """Segments of one input file (video or feature file); ``video_id`` defaults to the file stem."""
        video_id = video_id or unicode_name(path.stem)
        feats, meta = self.load_input(path, video_id, progress)
        return self.detect_features(feats, meta, video_id=video_id, source=str(path))

    def detect_features(self, feats: np.ndarray, meta: FeatureMeta | dict, video_id: str,
                        source: str) -> VideoDetections:
        """Segments of one video from its features ``(N, D)`` and sidecar ``meta`` (or its JSON object: at least
        ``fps``)."""
        from stale_cli.features.clip_backbone import feature_activation_error

        feats = np.asarray(feats, dtype=np.float32)
        meta = FeatureMeta.of(meta)

        expected = self.info.clip_activation if self.mode == STALE_MODE else getattr(self.clip, "activation", None)
        why = feature_activation_error(meta, expected)
        if why:
            raise DataError(f"{source}: {why}")
        self._check_clip(meta, source, feats.shape[1])
        if self.mode == STALE_MODE:
            if not math.isclose(meta.fps, self.fps, rel_tol=1e-3):
                log.info("%s: features at %.3g fps resampled to the checkpoint's %.3g fps", video_id, meta.fps, self.fps)
                feats, meta = resample_features(feats, meta, self.fps)
        duration = video_duration(meta, feats.shape[0])
        timeline = feature_timeline(meta, feats.shape[0])
        if self.mode == STALE_MODE:
            candidates, scores = self._stale_candidates(feats, meta)
        else:
            candidates, scores = self._clip_candidates(feats, meta, timeline)
        found = finalize(candidates, duration, self.detect_cfg)
        segments = [Segment(self.classes[k], float(s), float(e), float(sc), int(k)) for k, s, e, sc in found]
        extra = {"mode": self.mode}
        if self.settings.reading is not None:
            # The report shows the alternatives a kept segment stands for: the full list and who stands for whom.
            parents = reading_parents(segments, self.settings.reading)
            extra.update(all_segments=segments, parents=parents)
            segments = [s for i, s in enumerate(segments) if parents[i] == i]
        return VideoDetections(
            video_id=video_id,
            source=source,
            duration=duration,
            segments=segments,
            times=timeline.centres(),
            scores=scores,
            extra=extra,
            classes=tuple(self.classes),
        )

    def _check_clip(self, meta: FeatureMeta, source: str, width: int) -> None:
        """Refuse features of another CLIP model, or (CLIP features: as wide as the text) of other weights than
        the text tower: the checkpoint's (STALE mode) or the loaded CLIP's. What an older feature file does not
        record is said once per run, and the file is used."""
        if meta.clip_model is None:
            self._say_unidentified("model", source)
        elif not _same_clip(meta.clip_model, self.clip_model_name):
            if self.mode == STALE_MODE:
                raise CheckpointError(f"{source}: features are from {meta.clip_model} but the checkpoint was "
                                      f"trained on {self.clip_model_name} features")
            raise InputError(f"{source}: features are from {meta.clip_model}; pass --clip-model {meta.clip_model} "
                             "so the class text is encoded by the same CLIP")
        text = self.info.weights_id if self.mode == STALE_MODE else self.clip.weights_id
        if width != self.text.shape[1]:
            return  # not CLIP's features (a checkpoint trained on other features)
        same = meta.weights_id.same_as(text)
        if same is None:
            self._say_unidentified("weights", source, text)
        elif not same:
            whose = f"the checkpoint {self.checkpoint.name} was trained from" if self.mode == STALE_MODE \
                else "the text is encoded with"
            hint = mismatch_hint(meta.weights_id, text)
            if self.mode == STALE_MODE and meta.weights_id.label != text.label:
                hint = f"extract them with --clip-weights {text.label}"
            raise InputError(f"{source}: features made with CLIP weights {meta.weights_id} but {whose} {text}; "
                             f"{hint}")

    def _say_unidentified(self, what: str, source: str, assumed=None) -> None:
        if what in self._unidentified:
            return
        self._unidentified.add(what)
        assumed = assumed if assumed is not None else self.clip_model_name
        log.warning("%s: the features do not record which CLIP %s made them (an older stale, or made by hand); "
                    "assuming %s and going on (said once)", source, what, assumed)

    def _clip_candidates(self, feats: np.ndarray, meta: FeatureMeta, timeline) -> tuple[list, np.ndarray]:
        """Probabilities on the whole video (one background level per video), segments from its whole curves."""
        if feats.shape[1] != self.text.shape[1]:
            raise InputError(
                f"features are {feats.shape[1]}-wide but {self.clip_model_name} embeds in {self.text.shape[1]} "
                "dimensions; the training-free mode needs CLIP features of the same --clip-model"
            )
        probs = snippet_probabilities(feats, self.text, 1.0 / timeline.step, self.settings.clip_cfg,
                                      num_query=len(self.classes))  # (N, K+1)
        # DetectConfig.max_candidates applies per stretch of a window's length, as when this mode cut windows.
        candidates = [segments_from_curve(probs, timeline, self.detect_cfg, block=self.data_cfg.num_snippets)]
        return candidates, probs[:, :-1]

    def _stale_candidates(self, feats: np.ndarray, meta: FeatureMeta) -> tuple[list, np.ndarray]:
        """Candidates of every window, and per-row class probabilities (T_total, K) averaged over windows."""
        import torch

        from stale_cli.model.stale import detection_probabilities

        width = self.info.feature_dim
        if feats.shape[1] != width:
            raise CheckpointError(
                f"features are {feats.shape[1]}-wide but the checkpoint {self.checkpoint.name} takes {width}-wide "
                "features; extract them with the checkpoint's CLIP model"
            )
        N = feats.shape[0]
        K = len(self.classes)
        row_sum = np.zeros((N, K), np.float64)
        row_cnt = np.zeros((N, 1), np.float64)
        src = feature_timeline(meta, N)
        model_input = center_video(feats, self.data_cfg.video_mean)  # (N, D)
        windows = cut_windows(model_input, meta, self.data_cfg)
        prior_windows = None
        if self.prior_text is not None:  # frozen CLIP's reading of the raw features, cut into the same windows
            x = snippet_directions(feats, self.settings.clip_cfg.video_mean)  # (N, D)
            prior_windows = [w for _, w in cut_windows(x, meta, self.data_cfg)]
        reading = self.settings.new_names if self.new_idx else None
        new = self.new_idx
        # New names read with the model's where take frozen CLIP's class alone (prior weight 1); when every name
        # asked is new, that is the only weighting needed.
        where = reading in ("foreground", "both")
        weight = 1.0 if where and len(new) == K else self.detect_cfg.prior_weight
        # A new name's foreground is max(L_hat, L_ctx): L_ctx names no class, so it carries to names L_hat never
        # saw (stale_cli/model/context.py); checkpoints written before it have none.
        context = self.info.context_foreground
        l_ctx = context.probabilities(model_input) if where and context is not None else None  # (N,)
        clip_new = self._new_name_curve(feats, src) if reading in ("clip", "both") else None  # (N, n)
        if reading == "both" and l_ctx is not None:  # frozen CLIP's evidence, weighed by L_ctx (DetectConfig)
            clip_new = clip_new * context.relative(l_ctx)[:, None] ** self.detect_cfg.context_gate
        video = WindowedVideo(detection_grid(N, meta, self.data_cfg).num, self.detect_cfg)
        for i in range(0, len(windows), WINDOW_BATCH):
            chunk = windows[i : i + WINDOW_BATCH]
            x = torch.from_numpy(np.stack([w for _, w in chunk])).to(self.device)  # (B, T, D)
            T = x.shape[1]
            valid = torch.stack([torch.arange(T) < win.valid_len for win, _ in chunk]).to(self.device)  # (B, T)
            prior = None
            if prior_windows is not None:
                xw = normalize_rows(np.stack(prior_windows[i : i + WINDOW_BATCH]))  # (B, T, D)
                prior = torch.from_numpy(xw @ self.prior_text.T * self.settings.clip_cfg.logit_scale).softmax(-1)
            # the feature row each window snippet lies on: (B, T)
            rows_of = np.stack([np.clip(np.floor(src.to_index(win.timeline.centres())).astype(int), 0, N - 1)
                                for win, _ in chunk])
            with torch.inference_mode():
                out = self.model(x, valid, self.text)
                fg_new = out["fg"]  # (B, T)
                if l_ctx is not None:
                    fg_new = torch.maximum(fg_new, torch.from_numpy(l_ctx[rows_of]).to(fg_new))
                probs = detection_probabilities(out["logits"], fg_new if len(new) == K else out["fg"], K, prior,
                                                weight, self.settings.scoring)  # (B, T, K+1)
                if where and len(new) < K:
                    probs_new = detection_probabilities(out["logits"], fg_new, K, prior, 1.0, self.settings.scoring)
                    probs[..., new] = probs_new[..., new]
                probs = probs.cpu().numpy()  # column K is not read below: post-processing takes the K names' columns
            if reading == "clip":
                probs[..., new] = 0.0  # those names are scored by frozen CLIP below
            masks = out["masks"].float().cpu().numpy()  # (B, T, T)
            for b, (win, _) in enumerate(chunk):
                rows = rows_of[b]  # (T,)
                # Per-row curves (the plot, and "both"'s whole-video curve): each window snippet's probability goes
                # to the row it lies on.
                np.add.at(row_sum, rows[: win.valid_len], probs[b, : win.valid_len, :K])
                np.add.at(row_cnt, rows[: win.valid_len], 1.0)
                if reading == "both":  # either reading may say so: 1 - (1 - clip)(1 - foreground)
                    probs[b][:, new] = 1.0 - (1.0 - clip_new[rows]) * (1.0 - probs[b][:, new])
                video.add(probs[b], masks[b], win.timeline, win.start_row, win.valid_len)
        scores = (row_sum / np.maximum(row_cnt, 1.0)).astype(np.float32)  # (N, K)
        found = [video.segments()]
        if reading == "clip":
            scores[:, new] = clip_new
        elif reading == "both":
            fg_new = _fill_uncovered(scores[:, new], row_cnt[:, 0] > 0)  # (N, n)
            scores[:, new] = 1.0 - (1.0 - clip_new) * (1.0 - fg_new)
        if reading in ("clip", "both"):  # segments of the whole-video curve too: no window cuts an action there
            found.append(self._new_name_segments(scores[:, new], src))
        return found, scores

    def _new_name_curve(self, feats: np.ndarray, timeline) -> np.ndarray:
        """Frozen CLIP's probabilities (N, n) of the n names the checkpoint was not trained on, as the training-free
        mode reads them (every other name a distractor)."""
        new = self.new_idx
        rest = [r for r in range(self.prior_text.shape[0]) if r not in set(new)]
        probs = snippet_probabilities(feats, self.prior_text[new + rest], 1.0 / timeline.step, self.settings.clip_cfg,
                                      num_query=len(new))  # (N, n+1)
        return probs[:, :-1]

    def _new_name_segments(self, curve: np.ndarray, timeline) -> Segments:
        """Segments of the whole-video curves ``curve`` (N, n) of the new names, labelled with their indices."""
        rest = np.clip(1.0 - curve.sum(axis=1, keepdims=True), 0.0, 1.0)  # not read: "both" rows may sum above 1
        probs = np.concatenate([curve, rest], axis=1)  # (N, n+1)
        segs = segments_from_curve(probs, timeline, self.detect_cfg, block=self.data_cfg.num_snippets)
        return Segments(np.asarray(self.new_idx, dtype=np.int64)[segs.labels], segs.starts, segs.ends, segs.scores)


def _fill_uncovered(curve: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``curve`` (N, n) with its rows outside ``covered`` (N,) bool linearly interpolated from the covered ones
    (resize mode's windows sample a long video more sparsely than its feature rows; edges take the nearest)."""
    if covered.all() or not covered.any():
        return curve
    at = np.flatnonzero(covered)
    return interpolate_rows(curve[at], np.interp(np.arange(len(curve)), at, np.arange(at.size)))  # (N, n)


@dataclass
class Failure:
    path: Path
    message: str


def detect_batch(
    detector: Detector,
    paths: list[Path],
    on_result: Callable[[VideoDetections], None],
    on_error: Callable[[Failure], None] = lambda f: None,
    progress: Optional[Callable[[int], None]] = None,
    ids: Optional[list[str]] = None,
    journal=None,
    needs: Callable[[str], list] = lambda video_id: [],
    on_start: Callable[[Path, str], None] = lambda path, video_id: None,
) -> list[Failure]:
    """Detect every input in turn; a StaleError on one input is recorded and the batch goes on.

    ``ids``: video ids (default: :func:`~stale_cli.video_ids.video_ids`). With a ``journal``
    (:class:`stale_cli.detection.resume.DetectJournal`) a video it holds for the same input and settings is not detected
    again (its recorded detections go to ``on_result``, marked ``extra["resumed"]``) provided the files
    ``needs(video_id)`` exist; every other video is detected under its lock (skipped while another run holds it)
    and recorded in the journal before ``on_result`` sees it. ``on_start(path, video_id)`` is called just before an
    input is detected (not for one resumed or left to another run), then ``progress(n)`` as its frames are encoded.
    """
    from stale_cli.video_ids import video_ids

    failures = []
    ids = ids or video_ids(paths)
    records = journal.records() if journal is not None else {}
    for path, video_id in zip(paths, ids):
        lock = None
        if journal is not None:
            done = _resumable(journal, video_id, path, records, needs)
            if done is None:
                try:
                    lock = journal.claim(video_id, path)
                except StaleError as e:  # its lock file cannot be made (a directory in the way, permissions)
                    failure = Failure(path, f"{path}: {e}")
                    failures.append(failure)
                    on_error(failure)
                    continue
                if lock is None:
                    continue
                done = _resumable(journal, video_id, path, None, needs)  # finished by another run meanwhile?
            if done is not None:
                if lock is not None:
                    lock.release()
                journal.resumed += 1
                on_result(done)
                continue
        try:
            on_start(path, video_id)
            result = detector.detect(path, video_id, progress)
            if journal is not None:
                journal.append(result, path)
            on_result(result)
        except ResourceError:
            raise  # every further input would fail the same way
        except (MemoryError, RuntimeError) as e:  # an array this input needed: the next, smaller one may fit
            import torch

            if not out_of_memory(e):
                raise
            first = first_line(e)[:200]
            if isinstance(e, torch.cuda.OutOfMemoryError):  # the GPU's: every further input needs it too
                raise ResourceError(f"{path}: CUDA out of memory ({first}); rerun with a smaller --batch-size, or "
                                    "--device cpu") from None
            failure = Failure(path, f"{path}: out of memory ({first}); the other inputs go on")
            failures.append(failure)
            on_error(failure)
        except StaleError as e:
            msg = str(e)
            failure = Failure(path, msg if str(path) in msg or path.name in msg else f"{path}: {msg}")
            failures.append(failure)
            on_error(failure)
        finally:
            if lock is not None:
                lock.release()
    return failures


def _resumable(journal, video_id: str, path: Path, records: Optional[dict], needs) -> Optional[VideoDetections]:
    done = journal.finished(video_id, path, records)
    return done if done is not None and all(Path(p).exists() for p in needs(video_id)) else None
