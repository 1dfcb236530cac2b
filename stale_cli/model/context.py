"""The context foreground L_ctx: is something happening in this snippet, judged by how far it lies from the rest of
its video. Our addition to STALE's class-agnostic foreground, for names a checkpoint was not trained on.

Why: L_hat of Eq. (4) is learned from the snippets of the training classes and, where actions of different
classes share no look, it becomes a detector of those classes: on the zero-shot benchmark's default world it tells
seen-class snippets from background at AUC 0.97 and unseen-class ones at 0.67 (BENCHMARKS.md "Zero-shot"). A cue
that names no class carries to new ones by construction: an action replaces part of the scene, so its snippets lie
far from the video's typical snippet. L_ctx is a logistic regression on two such distances, fitted on the training
videos' foreground labels when `stale train` runs, and stored in the checkpoint (three numbers):

    u_t = x_t / |x_t|                     each snippet's feature, L2-normalised
    d_med(t) = |u_t - median_t(u)|        distance from the video's per-channel median snippet
    d_mean(t) = |u_t - mean_t(u)|         distance from the video's mean snippet
    L_ctx(t) = sigmoid(w_1 d_med(t) + w_2 d_mean(t) + b)

Its inputs are distances, unchanged by any rotation of the feature space, so no weight can single out a class.
Detection reads a new name's foreground as max(L_hat, L_ctx) (stale_cli/detection/detect.py); the checkpoint's own
names keep L_hat, which knows them better.

The fit also records L_ctx's level: its mean over the training foreground rows. How high L_ctx rises on an action
depends on the training footage, not on the action: where many actions in it are unannotated, the fit learns to call
them background and L_ctx falls on every action (its weights fall). Weighing frozen CLIP's reading of a new name
(`--new-names both`) reads L_ctx relative to that level, min(1, L_ctx / level), so that a snippet as far from its
scene as a typical training action keeps its whole evidence whatever the footage taught the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INPUTS = ("distance_to_median", "distance_to_mean", "bias")
L2 = 1e-4  # ridge on the weights of the fit (not the bias): keeps Newton's steps finite on separable data
STEPS = 50  # Newton iterations at most; the fit stops once a step moves no weight by 1e-8


def context_inputs(features: np.ndarray) -> np.ndarray:
    """``features`` (N, D) of one whole video -> (N, 3): d_med, d_mean and 1 per row (see the module docstring)."""
    u = features.astype(np.float32)  # float32: a 2-hour video at 4 fps is 59 MB a copy
    u /= np.linalg.norm(u, axis=1, keepdims=True).clip(1e-12)  # (N, D)
    d_med = np.linalg.norm(u - np.median(u, axis=0), axis=1)  # (N,)
    d_mean = np.linalg.norm(u - u.mean(axis=0, dtype=np.float64).astype(np.float32), axis=1)  # (N,)
    return np.stack([d_med, d_mean, np.ones(len(u))], axis=1).astype(np.float64)  # (N, 3)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ContextForeground:
    """L_ctx's three weights, in the order of :data:`INPUTS`, and its level: its mean over the training foreground
    rows (None in checkpoints written before it was recorded)."""

    weights: tuple[float, float, float]
    level: float | None = None

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """L_ctx (N,) float32 of each row of one whole video's ``features`` (N, D)."""
        z = context_inputs(features) @ np.asarray(self.weights)  # (N,)
        return _sigmoid(z).astype(np.float32)

    def relative(self, l_ctx: np.ndarray) -> np.ndarray:
        """``l_ctx`` (N,) as a share of the level, min(1, L_ctx / level); ``l_ctx`` itself without a level."""
        if self.level is None:
            return l_ctx
        return np.minimum(1.0, l_ctx / self.level).astype(np.float32)

    def to_dict(self) -> dict:
        d = {"inputs": list(INPUTS), "weights": [float(w) for w in self.weights]}
        if self.level is not None:
            d["foreground_level"] = float(self.level)
        return d

    @classmethod
    def from_dict(cls, d) -> "ContextForeground":
        """The checkpoint's record -> ContextForeground; ValueError when it is not three finite weights of
        :data:`INPUTS` (and, where recorded, a level in (0, 1])."""
        if not isinstance(d, dict) or list(d.get("inputs") or []) != list(INPUTS):
            raise ValueError(f"a record of the inputs {', '.join(INPUTS)}")
        w = d.get("weights")
        if not isinstance(w, (list, tuple)) or len(w) != len(INPUTS) or not all(_is_number(v) for v in w):
            raise ValueError(f"{len(INPUTS)} finite weights")
        level = d.get("foreground_level")
        if level is not None and not (_is_number(level) and 0.0 < level <= 1.0):
            raise ValueError("a foreground level in (0, 1]")
        return cls(tuple(float(v) for v in w), None if level is None else float(level))


def fit_context_foreground(videos: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> ContextForeground | None:
    """Fit L_ctx by Newton's method on the logistic loss (ridge :data:`L2` on the two distance weights).

    ``videos``: per video (features (N, D), foreground target (N,) in {0, 1}, keep (N,) bool: the rows that count;
    unseen-class instances are left out the way the training losses leave them out). None when the kept rows are
    all foreground or all background: there is nothing to tell apart.
    """
    z = [context_inputs(f)[k] for f, _, k in videos if k.any()]
    y = [t[k].astype(np.float64) for _, t, k in videos if k.any()]
    if not z:
        return None
    Z, Y = np.concatenate(z), np.concatenate(y)  # (M, 3), (M,)
    if Y.min() == Y.max():
        return None
    ridge = L2 * np.diag([1.0, 1.0, 0.0]) * len(Y)
    w = np.zeros(Z.shape[1])
    for _ in range(STEPS):
        p = _sigmoid(Z @ w)  # (M,)
        grad = Z.T @ (p - Y) + ridge @ w
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + ridge + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    level = _sigmoid(Z[Y > 0] @ w).mean()  # L_ctx's mean on the foreground rows
    return ContextForeground(tuple(float(v) for v in w), float(max(level, 1e-6)))
