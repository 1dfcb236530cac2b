"""Each STALE loss term (stale_cli/model/losses.py, Eqs. 9-12) on a tiny case whose value is worked out by hand in the
comments; snippets of unseen classes contribute to no term."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.data.windows import assign_labels
from stale_cli.model.losses import (STALELoss, classification_loss, completeness_loss, consistency_loss,
                                    mask_loss)
from stale_cli.timeline import Timeline

from tiny_stale import TINY_STALE  # tests/ is on sys.path (rootdir conftest)

LN2, LN3 = math.log(2), math.log(3)


def test_classification_loss_by_hand():
    # K = 1 (columns: class 0, background). Snippet 0: logits (0, 0), label 0 -> p = 1/2, CE = ln 2.
    # Snippet 1: logits (ln 3, 0), label 1 (background) -> p = (3/4, 1/4), CE = -ln(1/4) = ln 4.
    # Snippet 2 is padding with a terrible prediction; it must not count. Mean = (ln 2 + ln 4) / 2 = 1.5 ln 2.
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [100.0, -100.0]]])
    labels = torch.tensor([[0, 1, 1]])
    valid = torch.tensor([[True, True, False]])
    assert classification_loss(logits, labels, valid).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_classification_loss_splits_a_snippet_of_two_classes_evenly():
    # K = 2 (columns: class 0, class 1, background). Logits (ln 2, 0, 0) -> p = (1/2, 1/4, 1/4).
    # Snippet 0: classes 0 and 1 -> (-ln(1/2) - ln(1/4)) / 2 = 1.5 ln 2. Snippet 1: class 0 alone -> ln 2.
    # Mean = 1.25 ln 2. Without `also`, snippet 0 counts as class 0 alone: mean ln 2.
    logits = torch.tensor([[[LN2, 0.0, 0.0], [LN2, 0.0, 0.0]]])
    labels = torch.tensor([[0, 0]])
    also = torch.tensor([[1, 2]])  # 2 = K: no second class
    valid = torch.tensor([[True, True]])
    assert classification_loss(logits, labels, valid, also).item() == pytest.approx(1.25 * LN2, abs=1e-6)
    assert classification_loss(logits, labels, valid).item() == pytest.approx(LN2, abs=1e-6)


def _mask_case():
    # One video, T = 4, last snippet padding, K = 1 (label 1 = background). Snippets 0, 1 are foreground, so
    # columns 0 and 1 are scored; their ground-truth mask over rows i is g = (1, 1, 0 | pad).
    labels = torch.tensor([[0, 0, 1, 1]])
    valid = torch.tensor([[True, True, True, False]])
    gt = torch.zeros(1, 4, 4)
    gt[0, 0:2, 0:2] = 1.0  # rows 0-1 of columns 0-1
    logits = torch.full((1, 4, 4), 7.0)  # columns 2 (background) and 3 (padding) hold junk: not scored
    logits[0, :, 0] = torch.tensor([0.0, 0.0, 0.0, 50.0])  # column 0: m = (.5, .5, .5 | pad row ignored)
    logits[0, :, 1] = torch.tensor([LN3, 0.0, -LN3, -50.0])  # column 1: m = (.75, .5, .25 | pad)
    return logits, gt, labels, valid


def test_mask_loss_by_hand():
    logits, gt, labels, valid = _mask_case()
    # Column 0: every row BCE = ln 2, so mean over fg rows + mean over bg rows = 2 ln 2 = 1.386294.
    #   Dice = 1 - 2 (m.g) / (sum m^2 + sum g^2) = 1 - 2 * 1 / (0.75 + 2) = 0.272727; x 0.4 = 0.109091.
    #   Column 0 total = 1.495385.
    # Column 1: fg rows: -ln .75 = 0.287682 and -ln .5 = 0.693147, mean 0.490415; bg row: -ln(1 - .25) =
    #   0.287682 (one row, beta_bg weighs it as much as both fg rows together).
    #   Dice = 1 - 2 * 1.25 / (0.5625 + 0.25 + 0.0625 + 2) = 1 - 2.5 / 2.875 = 0.130435; x 0.4 = 0.052174.
    #   Column 1 total = 0.490415 + 0.287682 + 0.052174 = 0.830271.
    # Mean over the two foreground columns = (1.495385 + 0.830271) / 2 = 1.162828.
    loss = mask_loss(logits, gt, labels, valid, num_classes=1, dice_weight=0.4)
    assert loss.item() == pytest.approx(1.162828, abs=1e-5)


def test_mask_loss_perfect_mask_is_zero_with_standard_dice():
    # A perfect, confident mask costs ~0: BCE ~ e^-20 and the Dice with factor 2 is 1 - 2*2/(2+2) = 0 (the
    # printed Eq. (10) without the 2 would leave 0.5 * 0.4 = 0.2).
    _, gt, labels, valid = _mask_case()
    logits = torch.where(gt > 0, 20.0, -20.0)
    loss = mask_loss(logits, gt, labels, valid, num_classes=1, dice_weight=0.4)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_mask_loss_without_foreground_is_zero_not_nan():
    logits = torch.randn(2, 5, 5, requires_grad=True)
    labels = torch.full((2, 5), 3)  # K = 3: everything background
    loss = mask_loss(logits, torch.zeros(2, 5, 5), labels, torch.ones(2, 5, dtype=torch.bool), 3, 0.4)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_completeness_loss_by_hand():
    # L_hat logits (0, ln 3 | pad 5) -> L_hat = (.5, .75); gt (1, 0). BCE: -ln .5 = ln 2, -ln(1 - .75) = ln 4.
    # Mean over the two valid snippets = 1.5 ln 2; the padded snippet (p ~ 1 against gt 0) is ignored.
    fg_logits = torch.tensor([[0.0, LN3, 5.0]])
    gt = torch.tensor([[1.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    assert completeness_loss(fg_logits, gt, valid).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def _consistency_case():
    # T = 4 (snippet 3 is padding), K = 1, C = 2, theta_c = theta_m = 0.5.
    # Class probabilities of class 0: (3/4, 1/4, 9/10 | pad ~1) -> thresholded scores (.75, 0, .9).
    logits = torch.tensor([[[LN3, 0.0], [0.0, LN3], [math.log(9), 0.0], [10.0, 0.0]]])
    # Masks M[i, t], column t predicted by snippet t; row 3 is padding (all 1, must be ignored).
    masks = torch.zeros(1, 4, 4)
    masks[0, :, 0] = torch.tensor([0.9, 0.2, 0.2, 1.0])  # M_bin*M = (.9, 0, 0): pooled over 3 rows = 0.3
    masks[0, :, 1] = torch.tensor([0.8, 0.8, 0.8, 1.0])  # pooled 0.8
    masks[0, :, 2] = torch.tensor([0.1, 0.1, 0.1, 1.0])  # nothing above 0.5: pooled 0 -> never picked
    masks[0, :, 3] = 1.0  # padded column: never picked
    e_p = torch.tensor([[[1.0, 0.0], [-5.0, -5.0], [1.0, 2.0], [100.0, -100.0]]])
    e_m = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [-3.0, 7.0], [-100.0, 100.0]]])
    return logits, masks, e_p, e_m, torch.tensor([[True, True, True, False]])


def test_consistency_loss_by_hand():
    logits, masks, e_p, e_m, valid = _consistency_case()
    # k = 2. Classification branch picks snippets 2 (.9) and 0 (.75): F_clf = mean((1,2), (1,0)) = (1, 1).
    # Mask branch picks snippets 1 (sigma(.8)) and 0 (sigma(.3)): F_mask = mean((0,0), (2,0)) = (1, 0).
    # cos((1,1), (1,0)) = 1/sqrt(2) -> L_const = 1 - 0.707107 = 0.292893.
    loss = consistency_loss(logits, masks, e_p, e_m, valid, theta_c=0.5, theta_m=0.5, k=2)
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # k = 1: snippet 2 (1,2) against snippet 1 (0,0), a zero vector: cosine 0 with eps, loss 1, finite.
    loss = consistency_loss(logits, masks, e_p, e_m, valid, theta_c=0.5, theta_m=0.5, k=1)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_consistency_loss_empty_branch_is_zero_not_nan():
    logits, masks, e_p, e_m, valid = _consistency_case()
    e_p.requires_grad_(True)
    # theta_m = 0.95: no mask value on a valid row passes, so no video has both branches -> exact 0.
    loss = consistency_loss(logits, masks, e_p, e_m, valid, theta_c=0.5, theta_m=0.95, k=2)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(e_p.grad).all()


def test_stale_loss_weights_and_keys():
    logits, masks, e_p, e_m, valid = _consistency_case()
    mask_logits, gt_masks, labels, _ = _mask_case()
    out = {"logits": logits, "masks": masks, "mask_logits": mask_logits, "fg_logits": torch.zeros(1, 4),
           "clf_features": e_p, "mask_features": e_m}
    targets = {"labels": labels, "masks": gt_masks, "fg": (labels == 0).float(), "valid": valid}
    model_cfg = replace(ModelConfig(), consistency_topk=2)
    weights = LossConfig(weight_cls=2.0, weight_mask=0.5, weight_comp=3.0, weight_const=0.25)
    terms = STALELoss(model_cfg, weights)(out, targets)
    # fg logits 0 -> L_hat = .5 everywhere -> L_comp = ln 2 regardless of the ground truth.
    assert terms["comp"].item() == pytest.approx(LN2, abs=1e-6)
    assert terms["mask"].item() == pytest.approx(1.162828, abs=1e-5)  # same case as test_mask_loss_by_hand
    assert terms["const"].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # labels (0, 0, 1 | pad): snippet 0, logits (ln 3, 0), label 0: -ln(3/4) = ln(4/3); snippet 1, logits
    # (0, ln 3), label 0: -ln(1/4) = ln 4; snippet 2, logits (ln 9, 0), label 1: -ln(1/10) = ln 10.
    # Mean = (ln(4/3) + ln 4 + ln 10) / 3 = ln(160/3) / 3.
    assert terms["cls"].item() == pytest.approx(math.log(160 / 3) / 3, abs=1e-6)
    expected = 2.0 * terms["cls"] + 0.5 * terms["mask"] + 3.0 * terms["comp"] + 0.25 * terms["const"]
    assert terms["total"].item() == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------- unseen-class snippets teach nothing


def _constructed_batch(K=2, T=12):
    """One window: a seen instance at snippets 2..4 (class 0), an unseen one at 7..9 (ignored)."""
    t = assign_labels(Timeline(0.0, 1.0, T), T, [(2.0, 5.0, 0)], K, unseen=[(7.0, 10.0)])
    return {k: torch.from_numpy(v)[None] for k, v in t.items()}


def test_unseen_class_snippets_contribute_to_no_loss_term(tiny_clip_name, tiny_clip):
    targets = _constructed_batch()
    assert targets["ignore"][0].nonzero().flatten().tolist() == [7, 8, 9]
    assert (targets["labels"][0, 7:10] == 2).all() and (targets["masks"][0, 7:10] == 0).all()
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=12, clip_model=tiny_clip_name,
                      theta_c=0.0, theta_m=0.0, **TINY_STALE)
    criterion = STALELoss(cfg, LossConfig())
    torch.manual_seed(0)
    B, T, K1, C = 1, 12, 3, 32
    out = {"logits": torch.randn(B, T, K1), "mask_logits": torch.randn(B, T, T), "fg_logits": torch.randn(B, T),
           "clf_features": torch.randn(B, T, C), "mask_features": torch.randn(B, T, C)}
    out["masks"] = out["mask_logits"].sigmoid()
    base = criterion(out, targets)
    # Anything the model says at the ignored snippets, as snippets or as mask rows, changes no term.
    changed = {k: v.clone() for k, v in out.items()}
    changed["logits"][:, 7:10] = torch.randn(B, 3, K1) * 10
    changed["mask_logits"][:, 7:10, :] = torch.randn(B, 3, T) * 10  # rows of every column
    changed["mask_logits"][:, :, 7:10] = torch.randn(B, T, 3) * 10  # their own columns
    changed["masks"] = changed["mask_logits"].sigmoid()
    changed["fg_logits"][:, 7:10] = 10.0
    changed["clf_features"][:, 7:10] = torch.randn(B, 3, C)
    changed["mask_features"][:, 7:10] = torch.randn(B, 3, C)
    after = criterion(changed, targets)
    for k in ("cls", "mask", "comp", "const", "total"):
        assert torch.allclose(base[k], after[k]), k
    # ... while the same snippets called background (the old labelling) would have been supervised.
    as_background = {k: v for k, v in targets.items() if k != "ignore"}
    assert not torch.allclose(criterion(out, as_background)["comp"], criterion(changed, as_background)["comp"])
