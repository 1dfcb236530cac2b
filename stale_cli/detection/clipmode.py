"""The training-free mode: CLIP snippet-text similarity, the baseline every trained STALE checkpoint must beat.

Needs nothing but the CLIP weights the features came from. Per video:

1. **Prompt ensembling.** Each name (normalised to words, ``vocab.class_to_text``) is put into every template of
   :data:`TEMPLATES`; the text features of one name are L2-normalised, averaged and renormalised (the ensembling of
   CLIP's zero-shot ImageNet classifier): ``text: (K + M, C)``, computed once per batch. The rows are the K names
   asked for, then M *distractors* (``vocab.distractors``: generic action names, and a checkpoint's training
   names), so that a snippet showing some other action has a better name to go to than the ones asked for.
2. **Video-mean removal.** Snippet features are L2-normalised and ``video_mean`` x their mean over the video is
   subtracted, then renormalised: what every snippet of a video shares (scene, lighting, camera, and CLIP's
   modality gap) says nothing about when an action happens, and it gives some names a higher cosine with every
   frame of a video than others (the video-mean subtraction of T3AL, Liberatori et al. 2024, and FreeZAD).
3. **Similarity.** ``sim = feats @ text.T``: ``(T, K + M)`` cosines.
4. **Probabilities, calibrated across videos.** ``softmax(logit_scale * [sim_1..sim_{K+M}, background_level])``:
   a snippet is foreground for a name when that name beats every other name *and* a fixed cosine level, the same
   for every video. The earlier level, a quantile of each video's own similarities, made every video yield
   foreground, so a video where the action never happens still got confident detections. Only the K names asked
   for are kept: ``(T, K+1)``, column K the rest (background and distractors), like STALE's output.
5. **Temporal smoothing.** A Gaussian of ``smooth_seconds`` (sigma, in seconds, so independent of the feature
   rate) along time on the probabilities: one frame is a noisy witness of an action that lasts seconds.

Steps 2 and 4 were chosen on ``benchmarks/zero_shot.py`` (BENCHMARKS.md "Zero-shot"). These probabilities go
through the same segment extraction as STALE (``postprocess.segments_from_window`` with ``masks=None``: each
class's own probability curve serves as its mask).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from stale_cli.errors import DataError, InputError
from stale_cli.vocab import class_to_text

log = logging.getLogger(__name__)

MODE_NAME = "clip"  # the name of the training-free mode in the log and in output metadata

TEMPLATES = (
    "a video of a person {}.",
    "a photo of a person {}.",
    "a video of someone doing {}.",
    "a person is {}.",
    "a clip of {}.",
    "a video frame of {}.",
    "{}.",
)


@dataclass(frozen=True)
class ClipModeConfig:
    templates: tuple[str, ...] = TEMPLATES
    logit_scale: float = 100.0  # CLIP's trained logit scale exp(4.6052); the softmax temperature of zero-shot CLIP
    smooth_seconds: float = 0.5  # sigma of the Gaussian along time, seconds; 0 turns smoothing off
    video_mean: float = 1.0  # share of the video's mean (normalised) feature removed from every snippet
    # Cosine (after video-mean removal) a name must beat to call a snippet foreground; the same for every video.
    background_level: float = 0.0


def check_prompt_lengths(tokenizer, classes: list[str], templates: tuple[str, ...], context_length: int = 77) -> None:
    """Raise InputError for a class name whose longest prompt does not fit CLIP's context (77 tokens)."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:  # tokenizers without a raw encode (HF) truncate too; nothing to check against
        return
    context_length = getattr(tokenizer, "context_length", None) or context_length
    longest = max(templates, key=len)
    for name in classes:
        n = len(encode(longest.format(class_to_text(name)))) + 2  # + start and end of text
        if n > context_length:
            raise InputError(
                f"class name {name[:40]!r}... is too long for CLIP's {context_length}-token text context "
                f"({n} tokens in its prompt); shorten it"
            )


def class_text_features(clip, classes: list[str], cfg: ClipModeConfig = ClipModeConfig()) -> np.ndarray:
    """Prompt-ensembled, L2-normalised text features ``(K, C)`` float32 for ``classes``.

    ``clip`` is a ClipBackbone (``encode_text(list[str]) -> (N, C)``, ``.tokenizer``).
    """
    import torch

    check_prompt_lengths(clip.tokenizer, classes, cfg.templates)
    texts = [t.format(class_to_text(name)) for name in classes for t in cfg.templates]
    with torch.inference_mode():
        emb = clip.encode_text(texts)  # (K * P, C)
    return ensemble(torch.as_tensor(emb).float().cpu().numpy(), len(classes))  # (K, C)


def ensemble(emb: np.ndarray, num_names: int) -> np.ndarray:
    """Text features ``(K * P, C)`` of K names x P templates (name-major) -> unit rows ``(K, C)``: each template's
    feature normalised, averaged over the templates, renormalised (CLIP's prompt ensembling)."""
    emb = normalize_rows(emb.reshape(num_names, -1, emb.shape[-1]))  # (K, P, C)
    return normalize_rows(emb.mean(axis=1)).astype(np.float32)  # (K, C)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0 of ``x`` (T, K), sigma in rows, edges reflected."""
    if sigma <= 0 or x.shape[0] < 2:
        return x
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = min(radius, x.shape[0] - 1)
    xp = np.pad(x, ((pad, pad), (0, 0)), mode="reflect")  # (T + 2 pad, K)
    if pad < radius:  # a video shorter than the kernel: pad the rest with the edge values
        xp = np.pad(xp, ((radius - pad, radius - pad), (0, 0)), mode="edge")
    out = np.stack([np.convolve(xp[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1)  # (T, K)
    return out.astype(x.dtype)


def snippet_probabilities(
    features: np.ndarray, text: np.ndarray, fps: float, cfg: ClipModeConfig = ClipModeConfig(),
    num_query: int | None = None,
) -> np.ndarray:
    """Per-snippet class probabilities ``(T, K+1)`` (column K = background and distractors) for one whole video.

    ``features`` (T, C) CLIP image embeddings (any scale), ``text`` (K + M, C) from :func:`class_text_features`
    whose first ``num_query`` = K rows are the names asked for (None: all of them), ``fps`` the feature rate
    (snippets per second).
    """
    T, C = features.shape
    R, Ct = text.shape
    K = R if num_query is None else int(num_query)
    if C != Ct:
        raise DataError(
            f"features are {C}-wide but the CLIP text features are {Ct}-wide: the training-free mode needs CLIP "
            "features of the same --clip-model the text is encoded with"
        )
    sim = snippet_directions(features, cfg.video_mean) @ text.T.astype(np.float32)  # (T, K + M) cosines
    query = name_probabilities(sim, cfg)[:, :K]  # (T, K)
    probs = np.concatenate([query, 1.0 - query.sum(axis=1, keepdims=True)], axis=1)  # (T, K+1)
    # Smoothing the probabilities (not the cosines) keeps rows summing to 1 and puts a segment's edge where the
    # curve crosses half its height; smoothing cosines before the steep softmax (scale 100) widens segments.
    return gaussian_smooth(probs, cfg.smooth_seconds * fps).astype(np.float32)  # (T, K+1)


def name_probabilities(sim: np.ndarray, cfg: ClipModeConfig = ClipModeConfig()) -> np.ndarray:
    """Step 4 on cosines ``sim`` (..., R) with R names: ``softmax(logit_scale * [sim, background_level])`` ->
    (..., R + 1), the fixed background level last."""
    level = np.full(sim.shape[:-1] + (1,), cfg.background_level, np.float32)
    logits = cfg.logit_scale * np.concatenate([sim, level], axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=-1, keepdims=True)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def snippet_directions(features: np.ndarray, video_mean: float) -> np.ndarray:
    """What frozen CLIP compares with the text: a whole video's features ``(T, C)`` as unit rows, ``video_mean`` x
    their mean removed (step 2 above; ``data.windows.center_video``), float32 ``(T, C)``."""
    from stale_cli.model.data.windows import center_video

    return center_video(normalize_rows(features.astype(np.float32)), video_mean)
