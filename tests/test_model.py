"""STALE model (stale_cli/model/stale.py): shapes, padding, gradients, frozen text encoder, feature widths, text tower,
corner cases, and a mask head that localizes (a shifted event shifts the mask; columns see the whole window)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from stale_cli.errors import InputError
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.losses import STALELoss
from stale_cli.model.stale import STALE, detection_probabilities

from tiny_stale import tiny_stale  # tests/ is on sys.path (rootdir conftest)

CLASSES = ["BaseballPitch", "high_jump", "Pole Vault"]  # K = 3


@pytest.fixture()
def cfg(tiny_clip_name) -> ModelConfig:
    return ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                       num_heads=4, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1,
                       consistency_topk=4, context_init="")


def _build(cfg, clip, seed=0) -> STALE:
    torch.manual_seed(seed)
    return STALE(cfg, clip)


def _targets(B, T, K, valid):
    labels = torch.full((B, T), K)
    labels[:, 2:6] = 0
    masks = torch.zeros(B, T, T)
    masks[:, 2:6, 2:6] = 1.0
    return {"labels": labels, "masks": masks, "fg": (labels < K).float(), "valid": valid}


def test_output_shapes_and_ranges(cfg, tiny_clip):
    model = _build(cfg, tiny_clip).eval()
    text = model.encode_classes(CLASSES)
    assert text.shape == (4, 32)
    B, T = 2, 16
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 11:] = False
    out = model(torch.randn(B, T, 32), valid, text)
    assert out["logits"].shape == (B, T, 4)
    assert out["masks"].shape == (B, T, T) and out["mask_logits"].shape == (B, T, T)
    assert out["fg"].shape == (B, T) and out["foreground"].dtype == torch.bool
    assert out["query_masks"].shape == (B, cfg.num_queries, T)
    assert out["text"].shape == (B, 4, 32)
    assert out["clf_features"].shape == out["mask_features"].shape == (B, T, 32)
    assert out["probs"].shape == (B, T, 4)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(B, T))
    for key in ("masks", "fg", "query_masks", "probs"):
        assert 0 <= out[key].min() and out[key].max() <= 1
    assert not out["foreground"][1, 11:].any()  # padding is never foreground
    assert not any(k.startswith("visual") for k in model.state_dict())


def test_appended_padding_leaves_valid_outputs_unchanged(cfg, tiny_clip):
    model = _build(cfg, tiny_clip).eval()
    text = model.encode_classes(CLASSES)
    feats = torch.randn(1, 10, 32)
    with torch.no_grad():
        short = model(feats, torch.ones(1, 10, dtype=torch.bool), text)
        padded_feats = torch.cat([feats, 50 * torch.randn(1, 6, 32)], dim=1)  # junk in the padding
        valid = torch.arange(16)[None] < 10
        long = model(padded_feats, valid, text)
    torch.testing.assert_close(long["logits"][:, :10], short["logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long["fg"][:, :10], short["fg"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long["masks"][:, :10, :10], short["masks"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long["text"], short["text"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long["clf_features"][:, :10], short["clf_features"], atol=1e-5, rtol=1e-4)


def test_gradients_reach_prompt_and_text_encoder(cfg, tiny_clip):
    # every valid snippet foreground, so Eqs. (5)-(6) are on the gradient path; every probability and mask value
    # passes its threshold, so Eq. (12) has snippets to compare whatever the initial outputs
    cfg = replace(cfg, theta_bin=0.0, theta_c=0.0, theta_m=0.0, freeze_text_encoder=False)
    model = _build(cfg, tiny_clip).train()
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[0, 12:] = False
    out = model(torch.randn(2, 16, 32), valid, model.encode_classes(CLASSES))
    STALELoss(cfg, LossConfig())(out, _targets(2, 16, 3, valid))["total"].backward()
    enc = model.text_encoder
    for p in (enc.context, enc.background, enc.token_embedding.weight, model.cross_modal.alpha,
              model.classifier.logit_scale, model.temporal_encoder.encoder.layers[0].linear1.weight,
              model.cross_modal.co_attn.in_proj_weight, model.representation_masking.merge.weight,
              model.mask_localizer.convs[0].weight, model.mask_localizer.offset_bias, model.consistency.clf.weight,
              model.consistency.mask.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the caller's CLIP is not modified or connected: the text tower is a copy
    assert tiny_clip.token_embedding.weight.grad is None
    assert enc.token_embedding.weight is not tiny_clip.token_embedding.weight


def test_prompt_context_starts_as_the_hand_made_prompt(cfg, tiny_clip):
    import open_clip

    model = _build(replace(cfg, context_init="a video of a person"), tiny_clip)
    enc = model.text_encoder
    ids = open_clip.get_tokenizer(cfg.clip_model)(["a video of a person"])[0]
    words = ids[1 : int((ids != 0).sum()) - 1]
    assert enc.context.shape[0] == len(words) == 5
    torch.testing.assert_close(enc.context.detach(), tiny_clip.token_embedding.weight[words].detach())
    # the untrained prompt of a class is CLIP's own encoding of the hand-made sentence
    with torch.no_grad():
        prompted = model.encode_classes(["HighJump"])[0]
        plain = tiny_clip.encode_text(open_clip.get_tokenizer(cfg.clip_model)(["a video of a person high jump."]))[0]
    torch.testing.assert_close(prompted, plain.float(), atol=1e-4, rtol=1e-4)


def test_frozen_text_encoder_gets_no_gradients(cfg, tiny_clip):
    model = _build(replace(cfg, freeze_text_encoder=True), tiny_clip)
    valid = torch.ones(1, 16, dtype=torch.bool)
    out = model(torch.randn(1, 16, 32), valid, model.encode_classes(CLASSES))
    STALELoss(cfg, LossConfig())(out, _targets(1, 16, 3, valid))["total"].backward()
    enc = model.text_encoder
    frozen = [(n, p) for n, p in enc.named_parameters() if n not in ("context", "background")]
    assert frozen and all(not p.requires_grad and p.grad is None for _, p in frozen)
    assert enc.context.grad.abs().sum() > 0 and enc.background.grad.abs().sum() > 0


@pytest.mark.parametrize("width", [48, 2048])
def test_feature_width_other_than_embed_dim(cfg, tiny_clip, width):
    model = _build(replace(cfg, feature_dim=width), tiny_clip)
    out = model(torch.randn(2, 16, width), torch.ones(2, 16, dtype=torch.bool), model.encode_classes(CLASSES))
    assert out["logits"].shape == (2, 16, 4)
    with pytest.raises(InputError, match="features are 32-dimensional"):
        model(torch.randn(2, 16, 32), torch.ones(2, 16, dtype=torch.bool), model.encode_classes(CLASSES))


def test_text_width_other_than_embed_dim(cfg, tiny_clip_name):
    import open_clip

    clip = open_clip.create_model(tiny_clip_name, pretrained=None, embed_dim=48)  # text width 32, joint 48
    model = _build(replace(cfg, embed_dim=48), clip)
    text = model.encode_classes(CLASSES)
    assert text.shape == (4, 48)
    assert model(torch.randn(1, 16, 32), torch.ones(1, 16, dtype=torch.bool), text)["logits"].shape == (1, 16, 4)
    with pytest.raises(InputError, match="embed_dim=48"):
        STALE(cfg, clip)


def test_without_context_the_class_rows_are_clips_own_text_embedding(cfg, tiny_clip, tiny_clip_name):
    import open_clip

    model = _build(replace(cfg, context_tokens=0), tiny_clip)
    tokens = open_clip.get_tokenizer(tiny_clip_name)(["baseball pitch.", "high jump."])
    with torch.no_grad():
        expected = tiny_clip.encode_text(tokens)
        rows = model.encode_classes(["BaseballPitch", "high_jump"])
    torch.testing.assert_close(rows[:2], expected, atol=1e-5, rtol=1e-5)


def test_background_row_and_class_rows_do_not_depend_on_the_list(cfg, tiny_clip):
    model = _build(cfg, tiny_clip)
    with torch.no_grad():
        a = model.encode_classes(["high_jump"])
        b = model.encode_classes(["BaseballPitch", "high_jump"])
    torch.testing.assert_close(a[-1], b[-1])
    torch.testing.assert_close(a[0], b[1])
    assert not torch.allclose(b[0], b[1])


def test_class_name_too_long_names_the_class(cfg, tiny_clip):
    model = _build(cfg, tiny_clip)
    long_name = " ".join(["jump"] * 72)  # 72 tokens + SOT + "." + EOT + 4 context > 77
    with pytest.raises(InputError, match="too long") as err:
        model.encode_classes(["high_jump", long_name])
    assert "jump jump jump" in str(err.value)
    assert model.encode_classes([" ".join(["jump"] * 70)]).shape == (2, 32)  # 70 + 3 + 4 = 77 fits


def test_all_background_window_has_no_nan(cfg, tiny_clip):
    model = _build(replace(cfg, theta_bin=1.0), tiny_clip)  # L_hat never exceeds 1: nothing is foreground
    valid = torch.ones(2, 16, dtype=torch.bool)
    text = model.encode_classes(CLASSES)
    out = model(torch.randn(2, 16, 32), valid, text)
    assert not out["foreground"].any()
    torch.testing.assert_close(out["text"], text.expand(2, -1, -1))  # Eq. (6) with E_c = 0: text unchanged
    targets = {"labels": torch.full((2, 16), 3), "masks": torch.zeros(2, 16, 16), "fg": torch.zeros(2, 16),
               "valid": valid}
    terms = STALELoss(cfg, LossConfig())(out, targets)
    terms["total"].backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_rebuilt_without_clip_weights_from_state_dict(cfg, tiny_clip, tiny_clip_name):
    import open_clip

    model = _build(cfg, tiny_clip).eval()
    with torch.no_grad():
        model.text_encoder.context.add_(1.0)  # a "trained" prompt, different from any fresh init
    state = model.state_dict()
    rebuilt = STALE(cfg, open_clip.create_model(tiny_clip_name, pretrained=None)).eval()
    rebuilt.load_state_dict(state)
    feats, valid = torch.randn(1, 16, 32), torch.ones(1, 16, dtype=torch.bool)
    with torch.no_grad():
        a = model(feats, valid, model.encode_classes(CLASSES))
        b = rebuilt(feats, valid, rebuilt.encode_classes(CLASSES))
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(a["masks"], b["masks"])


def test_mixed_precision_forward_and_loss_are_finite(cfg, tiny_clip):
    # Training runs under autocast on CUDA; CPU autocast (bfloat16) exercises the same dtype paths here.
    model = _build(replace(cfg, theta_bin=0.0), tiny_clip)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 9:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 16, 32), valid, model.encode_classes(CLASSES))
        terms = STALELoss(cfg, LossConfig())(out, _targets(2, 16, 3, valid))
    terms["total"].backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(model.text_encoder.context.grad).all()


def test_detection_probabilities_by_hand():
    # K = 2. Logits (ln 3, 0, 0): softmax (3/5, 1/5, 1/5); over the actions alone (3/4, 1/4).
    # Snippet 0, L_hat 0.2: foreground max(1 - 1/5, 0.2) = 0.8 -> (0.6, 0.2, 0.2), the classifier's own softmax.
    # Snippet 1, same logits, L_hat 0.96: foreground 0.96 -> (0.72, 0.24, 0.04).
    logits = torch.tensor([[[math.log(3), 0.0, 0.0], [math.log(3), 0.0, 0.0]]])
    fg = torch.tensor([[0.2, 0.96]])
    p = detection_probabilities(logits, fg)
    torch.testing.assert_close(p, torch.tensor([[[0.6, 0.2, 0.2], [0.72, 0.24, 0.04]]]))


def test_detection_probabilities_one_name_depends_on_the_name():
    # One snippet, rows: the name asked (K = 1), one distractor, background. Logits (0, ln 9, 0): softmax over
    # all three (0.1, 0.9, ... ) -> background 1/11; over the two names (0.1, 0.9). L_hat 0.5, so foreground
    # max(1 - 1/11, 0.5) = 10/11, and P(name) = 0.1 x 10/11 = 1/11: the distractor takes the snippet.
    logits = torch.tensor([[[0.0, math.log(9.0), 0.0]]])
    fg = torch.tensor([[0.5]])
    p = detection_probabilities(logits, fg, num_query=1)
    torch.testing.assert_close(p, torch.tensor([[[1 / 11, 10 / 11]]]))
    # Without the distractor (the old inference, K = 1 alone) the name would get all the foreground.
    alone = detection_probabilities(logits[..., [0, 2]], fg)
    torch.testing.assert_close(alone[..., 0], torch.tensor([[0.5]]))  # max(1 - 1/2, 0.5) x 1
    # The paper's scoring: softmax over the name and the background only.
    torch.testing.assert_close(detection_probabilities(logits, fg, 1, scoring="paper"), torch.tensor([[[0.5, 0.5]]]))
    # A prior that agrees with the classifier changes nothing; one that disagrees pulls half way (geometric mean).
    prior = torch.tensor([[[0.5, 0.5]]])
    mixed = detection_probabilities(logits, fg, 1, prior=prior, prior_weight=0.5)
    expected = (0.1 ** 0.5 * 0.5 ** 0.5) / (0.1 ** 0.5 * 0.5 ** 0.5 + 0.9 ** 0.5 * 0.5 ** 0.5) * 10 / 11
    torch.testing.assert_close(mixed[..., 0], torch.tensor([[expected]]))


# ---------------------------------------------------------------- the mask head localizes


def test_shifted_window_gives_a_correspondingly_shifted_mask(tiny_clip_name, tiny_clip):
    """Same background everywhere and one event: moving the event by s snippets moves M by s along both axes."""
    model = tiny_stale(tiny_clip_name, tiny_clip)
    g = torch.Generator().manual_seed(1)
    background, event = torch.randn(32, generator=g), torch.randn(5, 32, generator=g)  # (C,), (5, C)

    def window(at: int) -> torch.Tensor:
        x = background.repeat(32, 1)  # (T, C)
        x[at:at + 5] = event
        return x[None]  # (1, T, C)

    valid = torch.ones(1, 32, dtype=torch.bool)
    with torch.no_grad():
        text = model.encode_classes(["a", "b"])  # (K+1, C)
        m1 = model(window(8), valid, text)["mask_logits"][0]  # (T, T)
        m2 = model(window(15), valid, text)["mask_logits"][0]
    s, inner = 7, slice(3, 20)  # rows/columns away from the window edges (two kernel-3 convolutions pad there)
    shifted = m2[3 + s:20 + s, 3 + s:20 + s]
    torch.testing.assert_close(shifted, m1[inner, inner], atol=1e-4, rtol=1e-4)
    assert (m1[inner, inner] - m1[inner, inner].mean()).abs().max() > 1e-3  # not trivially constant


def test_mask_columns_see_the_whole_window(tiny_clip_name, tiny_clip):
    """Column t depends on rows far from t (the paper's local head could not), through the pairwise product."""
    model = tiny_stale(tiny_clip_name, tiny_clip)
    x = torch.randn(1, 32, 32)
    valid = torch.ones(1, 32, dtype=torch.bool)
    with torch.no_grad():
        before = model(x, valid, model.encode_classes(["a"]))["mask_logits"][0, :, 2]
        x[0, 25] += 3.0  # far from snippet 2
        after = model(x, valid, model.encode_classes(["a"]))["mask_logits"][0, :, 2]
    assert (before[25] - after[25]).abs() > 1e-3
