"""STALE's training objective, paper §3.3, Eqs. (9)-(12): L = w_c L_c + w_m L_m + w_comp L_comp + w_const L_const.

Letters as in stale.py: B batch, T snippets, K classes (+1 background, the last index), C channels.

Padding (``valid`` False) is excluded from every term, both as a snippet to score and, for the masks, as a row of
a mask column. So are snippets of instances whose class is outside the training vocabulary (``ignore`` True,
zero-shot training): they are neither foreground nor background (docs/model.md), since calling them background
would teach the class-agnostic parts (completeness, masks) that unseen actions are background. Each term is a
mean over what it is defined on; a term with nothing to average over (no foreground in the batch) is an exact
zero that stays in the autograd graph, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from stale_cli.model.config import LossConfig, ModelConfig


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum().float() * 0.0  # keeps the graph and device of `like`; float32 like every other term


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                        also: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (9): cross-entropy over K+1 classes, averaged over the valid snippets.

    logits (B, T, K+1), labels (B, T) long in [0, K] (K = background), valid (B, T) bool. ``also`` (B, T) long: a
    second class of a snippet inside instances of two classes (K where none). Such a snippet's target is split
    evenly between its two classes, -(log p_a + log p_b) / 2: a one-hot target would teach the model that one of
    two true labels is wrong, and the per-snippet softmax could never report both. Eq. (9) assumes one label.
    """
    if not valid.any():
        return _zero(logits)
    logp = logits[valid].float().log_softmax(dim=-1)  # (V, K+1)
    nll = -logp.gather(1, labels[valid][:, None])[:, 0]  # (V,)
    if also is not None:
        K = logits.shape[-1] - 1
        second = also[valid]  # (V,)
        two = second < K  # (V,)
        nll_b = -logp.gather(1, second[:, None])[:, 0]  # (V,); column K where there is no second class
        nll = torch.where(two, 0.5 * (nll + nll_b), nll)
    return nll.mean()


def mask_loss(mask_logits: torch.Tensor, gt_masks: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
              num_classes: int, dice_weight: float) -> torch.Tensor:
    """Eq. (10) on the mask columns of the foreground snippets, averaged over those columns.

    For one column t (a foreground snippet) with predicted mask m and ground truth g over the T_v valid rows:

        L_m = -(1/T_v) [beta_fg sum_i g_i log m_i + beta_bg sum_i (1 - g_i) log(1 - m_i)]
              + lambda_2 (1 - 2 m.g / sum_i (m_i^2 + g_i^2))

    beta_fg = T_v / n_fg and beta_bg = T_v / n_bg are the inverse proportions of foreground/background rows in
    that column, so the BCE part equals mean BCE over the foreground rows + mean BCE over the background rows
    (a part with no rows is 0). Departures from Eq. (10) as printed: the BCE is written with its minus sign (the
    printed sum of log-likelihoods would be maximised), it is divided by T_v so that it does not grow with the
    window length, and the Dice term uses the standard factor 2 of the binary Dice loss the paper cites [25]
    (as printed, 1 - m.g / sum(m^2 + g^2) is 0.5 for a perfect mask).

    mask_logits (B, T, T) (column t = mask of snippet t), gt_masks (B, T, T) in {0, 1}, labels (B, T).
    """
    B, T, _ = mask_logits.shape
    columns = valid & (labels < num_classes)  # foreground snippets: (B, T)
    if not columns.any():
        return _zero(mask_logits)
    rows = valid[:, :, None].to(mask_logits.dtype)  # valid rows i of every column: (B, T, 1)
    logits = mask_logits.float().transpose(1, 2)[columns]  # column t as a vector over rows i: (F, T)
    g = gt_masks.float().transpose(1, 2)[columns]  # (F, T)
    r = rows.float().transpose(1, 2).expand(B, T, T)[columns]  # (F, T)
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none")  # -[g log m + (1-g) log(1-m)]: (F, T)
    fg_rows, bg_rows = g * r, (1 - g) * r  # (F, T)
    n_fg, n_bg = fg_rows.sum(1), bg_rows.sum(1)  # (F,)
    bce_fg = (bce * fg_rows).sum(1) / n_fg.clamp(min=1)  # (F,)
    bce_bg = (bce * bg_rows).sum(1) / n_bg.clamp(min=1)  # (F,)
    m = torch.sigmoid(logits) * r  # (F, T)
    dice = 1 - 2 * (m * g).sum(1) / ((m * m).sum(1) + (g * g * r).sum(1)).clamp(min=1e-6)  # (F,)
    return (bce_fg + bce_bg + dice_weight * dice).mean()


def completeness_loss(fg_logits: torch.Tensor, gt_fg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. (11): binary cross-entropy between L_hat (B, T) and the ground-truth foreground (B, T), valid snippets.

    Eq. (11) as printed, -(g log L + log(g) L), is garbled (log g is -inf on background); we implement the BCE
    the text describes: -(g log L + (1 - g) log(1 - L)), averaged over valid snippets.
    """
    if not valid.any():
        return _zero(fg_logits)
    return F.binary_cross_entropy_with_logits(fg_logits[valid].float(), gt_fg[valid].float())


def _topk_mean(features: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of the (up to) k highest positive-scoring snippets: (B, T, C), (B, T) -> (B, C), (B,) bool."""
    B, T, C = features.shape
    top, idx = scores.topk(min(k, T), dim=1)  # (B, k)
    weight = (top > 0).to(features.dtype)  # snippets that passed the thresholds: (B, k)
    picked = features.gather(1, idx[..., None].expand(-1, -1, C))  # (B, k, C)
    mean = (picked * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1)  # (B, C)
    return mean, weight.sum(1) > 0


def consistency_loss(logits: torch.Tensor, masks: torch.Tensor, e_p: torch.Tensor, e_m: torch.Tensor,
                     valid: torch.Tensor, theta_c: float, theta_m: float, k: int) -> torch.Tensor:
    """Eq. (12): L_const = 1 - cos(F_clf, F_mask), averaged over videos where both branches find foreground.

    Our reading of the paper's loose notation (the printed formulas do not type-check):
    - classification branch: P = softmax(logits) (K+1, T), P_bin = [P > theta_c]; a snippet's score is its best
      thresholded action-class probability max_{k<K} (P_bin * P)[k, t] (the ``[:K]`` drops background);
      F_clf = mean of E_p over the top-k scoring snippets.
    - mask branch: M_bin = [M > theta_m]; a snippet's score is sigma(1DPool_i((M_bin * M)[i, t])), the average
      (over valid rows) of the thresholded mask it predicts; F_mask = mean of E_m over the top-k snippets.
    E_p, E_m are 1-D convs of the snippet embedding F_vis (the paper's "E" in Fig. 2 is that embedding). Only
    snippets whose score is positive (something passed the threshold) are taken; the selection itself carries
    no gradient (thresholds), the loss trains E_p, E_m and the encoder below them.
    logits (B, T, K+1), masks (B, T, T), e_p/e_m (B, T, C), valid (B, T).
    """
    B, T, C = e_p.shape
    p = logits.float().softmax(dim=-1)[..., :-1]  # action classes only: (B, T, K)
    clf_score = (p * (p > theta_c)).amax(dim=-1) * valid  # (B, T)
    rows = valid[:, :, None].float()  # (B, T, 1)
    m = masks.float() * (masks > theta_m) * rows  # M_bin * M on valid rows: (B, T, T)
    pooled = m.sum(1) / rows.sum(1).clamp(min=1)  # 1DPool over rows i: (B, T)
    mask_score = torch.sigmoid(pooled) * (pooled > 0) * valid  # (B, T)
    f_clf, ok_clf = _topk_mean(e_p.float(), clf_score, k)  # (B, C), (B,)
    f_mask, ok_mask = _topk_mean(e_m.float(), mask_score, k)  # (B, C), (B,)
    ok = ok_clf & ok_mask  # (B,)
    if not ok.any():
        return _zero(e_p) + _zero(e_m)
    return (1 - F.cosine_similarity(f_clf[ok], f_mask[ok], dim=-1, eps=1e-6)).mean()


class STALELoss(nn.Module):
    """Weighted sum of Eqs. (9)-(12). ``forward(out, targets)`` -> {"cls", "mask", "comp", "const", "total"}.

    out: the dict of ``STALE.forward`` (uses logits, mask_logits, masks, fg_logits, clf_features,
    mask_features). targets: labels (B, T) long in [0, K] (K = background), masks (B, T, T) float (column t =
    ground-truth instance mask of snippet t, zeros for background snippets), fg (B, T) float, valid (B, T) bool,
    and optionally ignore (B, T) bool: snippets of unseen-class instances, left out of every term, and also (B, T)
    long: a snippet's second class (K where none), see :func:`classification_loss`.
    """

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig):
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg

    def forward(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, w = self.model_cfg, self.loss_cfg
        valid, labels = targets["valid"], targets["labels"]
        if "ignore" in targets:
            valid = valid & ~targets["ignore"]  # (B, T): the snippets supervised by every term below
        K = out["logits"].shape[-1] - 1
        losses = {
            "cls": classification_loss(out["logits"], labels, valid, targets.get("also")),
            "mask": mask_loss(out["mask_logits"], targets["masks"], labels, valid, K, w.dice_weight),
            "comp": completeness_loss(out["fg_logits"], targets["fg"], valid),
            "const": consistency_loss(out["logits"], out["masks"], out["clf_features"], out["mask_features"],
                                      valid, cfg.theta_c, cfg.theta_m, cfg.consistency_topk),
        }
        losses["total"] = (w.weight_cls * losses["cls"] + w.weight_mask * losses["mask"]
                           + w.weight_comp * losses["comp"] + w.weight_const * losses["const"])
        return losses
