"""The training-free mode: CLIP snippet-text similarity, the baseline every trained STALE checkpoint must beat.

Needs nothing but the CLIP weights the features came from. Per video:

1. **Prompt ensembling.** Each class name (normalised to words, ``vocab.class_to_text``) is put into every
   template of :data:`TEMPLATES`; the text features of one class are L2-normalised, averaged and renormalised
   (the ensembling of CLIP's zero-shot ImageNet classifier): ``text: (K, C)``, computed once per batch.
2. **Similarity.** Snippet features are L2-normalised; ``sim = feats @ text.T``: ``(T, K)`` cosines.
3. **Background estimate (adaptive, per video).** CLIP has no "no action" class, and its cosines have a
   video-dependent offset (lighting, scene, camera), so a fixed threshold does not transfer between videos.
   The background's similarity is the ``background_quantile`` (default 0.25) of each snippet's best class
   similarity over the whole video, plus ``background_margin``: a snippet is foreground when its best class beats
   what the least action-like quarter of the same video reaches by more than the margin. It assumes at least a
   quarter of a video is background (true of untrimmed videos; a clip that is one action from start to end is
   found only where CLIP is most sure). We do not use "background prompts" ("a video of nothing happening"):
   zero-shot CLIP was never trained on a notion of "no action", so such a prompt's cosine is not a calibrated
   null level; the video's own distribution is.
4. **Probabilities.** ``softmax(logit_scale * [sim_1..sim_K, background])``: ``(T, K+1)``, with CLIP's own
   logit scale 100 as temperature, column K the background, like STALE's classifier output (Eq. 7).
5. **Temporal smoothing.** A Gaussian of ``smooth_seconds`` (sigma, in seconds, so independent of the feature
   rate) along time on the probabilities: one frame is a noisy witness of an action that lasts seconds.

These probabilities go through the same segment extraction as STALE (``postprocess.segments_from_window`` with
``masks=None``: each class's own probability curve serves as its mask).
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
    background_quantile: float = 0.25  # which quantile of the per-snippet best-class similarity is "background"
    background_margin: float = 0.02  # cosine by which a snippet must beat the background level (2 logits at 100)


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
    emb = torch.as_tensor(emb).float().cpu().numpy()
    emb = emb.reshape(len(classes), len(cfg.templates), -1)  # (K, P, C)
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)
    text = emb.mean(axis=1)  # (K, C)
    return (text / np.linalg.norm(text, axis=-1, keepdims=True).clip(1e-12)).astype(np.float32)


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
    features: np.ndarray, text: np.ndarray, fps: float, cfg: ClipModeConfig = ClipModeConfig()
) -> np.ndarray:
    """Per-snippet class probabilities ``(T, K+1)`` (column K = background) for one whole video.

    ``features`` (T, C) CLIP image embeddings (any scale), ``text`` (K, C) from :func:`class_text_features`,
    ``fps`` the feature rate (snippets per second).
    """
    T, C = features.shape
    K, Ct = text.shape
    if C != Ct:
        raise DataError(
            f"features are {C}-wide but the CLIP text features are {Ct}-wide: the training-free mode needs CLIP "
            "features of the same --clip-model the text is encoded with"
        )
    feats = features / np.linalg.norm(features, axis=-1, keepdims=True).clip(1e-12)  # (T, C)
    sim = feats.astype(np.float32) @ text.T  # (T, K) cosines
    background = np.quantile(sim.max(axis=1), cfg.background_quantile) + cfg.background_margin  # scalar
    logits = cfg.logit_scale * np.concatenate([sim, np.full((T, 1), background, np.float32)], axis=1)  # (T, K+1)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)  # (T, K+1)
    # Smoothing the probabilities (not the cosines) keeps rows summing to 1 and puts a segment's edge where the
    # curve crosses half its height; smoothing cosines before the steep softmax (scale 100) widens segments.
    return gaussian_smooth(probs, cfg.smooth_seconds * fps).astype(np.float32)  # (T, K+1)

