"""Issue 7: the mask head localizes, unseen-class snippets teach nothing, and the training recipe's parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stale_cli.checkpoint import load_checkpoint
from stale_cli.data.annotations import parse_annotations
from stale_cli.data.dataset import WindowDataset, load_video_set
from stale_cli.data.windows import DataConfig, assign_labels
from stale_cli.fileio import write_features
from stale_cli.model.config import LossConfig, ModelConfig
from stale_cli.model.losses import STALELoss
from stale_cli.model.stale import STALE
from stale_cli.timeline import Timeline
from stale_cli.train import TrainConfig, _covered, lr_factor, param_groups, predict, train

TINY = dict(encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
            dropout=0.0, consistency_topk=4, mask_dim=16)


def _model(tiny_clip_name, tiny_clip, T=32, **kw) -> STALE:
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=T, clip_model=tiny_clip_name, **{**TINY, **kw})
    return STALE(cfg, tiny_clip).eval()


def test_shifted_window_gives_a_correspondingly_shifted_mask(tiny_clip_name, tiny_clip):
    """Same background everywhere and one event: moving the event by s snippets moves M by s along both axes."""
    model = _model(tiny_clip_name, tiny_clip)
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
    model = _model(tiny_clip_name, tiny_clip)
    x = torch.randn(1, 32, 32)
    valid = torch.ones(1, 32, dtype=torch.bool)
    with torch.no_grad():
        before = model(x, valid, model.encode_classes(["a"]))["mask_logits"][0, :, 2]
        x[0, 25] += 3.0  # far from snippet 2
        after = model(x, valid, model.encode_classes(["a"]))["mask_logits"][0, :, 2]
    assert (before[25] - after[25]).abs() > 1e-3


def _constructed_batch(K=2, T=12):
    """One window: a seen instance at snippets 2..4 (class 0), an unseen one at 7..9 (ignored)."""
    t = assign_labels(Timeline(0.0, 1.0, T), T, [(2.0, 5.0, 0)], K, unseen=[(7.0, 10.0)])
    return {k: torch.from_numpy(v)[None] for k, v in t.items()}


def test_unseen_class_snippets_contribute_to_no_loss_term(tiny_clip_name, tiny_clip):
    targets = _constructed_batch()
    assert targets["ignore"][0].nonzero().flatten().tolist() == [7, 8, 9]
    assert (targets["labels"][0, 7:10] == 2).all() and (targets["masks"][0, 7:10] == 0).all()
    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=12, clip_model=tiny_clip_name,
                      theta_c=0.0, theta_m=0.0, **TINY)
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


def test_training_windows_holding_only_unseen_actions_are_dropped(tmp_path):
    db = {"v": {"subset": "val", "duration": 20.0, "annotations": [
        {"segment": [1, 4], "label": "Seen"}, {"segment": [17, 19.5], "label": "Unseen"}]}}
    ann = parse_annotations({"database": db})
    stamps = np.arange(20.0)
    write_features(tmp_path / "v.npy", np.zeros((20, 8), np.float32), {
        "fps": 1.0, "timestamps": stamps.tolist(), "duration": 20.0, "source": "v.mp4", "clip_model": "x",
        "clip_weights": "random", "num_frames": 20})
    cfg = DataConfig(num_snippets=8, overlap=0.0, empty_window_keep=1.0)  # windows [0,8) [8,16) [12,20)
    vs = load_video_set(tmp_path, list(ann.videos.values()), cfg)
    kept = [w.start_row for _, w, *_ in WindowDataset(vs, ["Seen"], cfg, training=True).items]
    assert kept == [0, 8]  # [8, 16) is background only (kept, keep rate 1); [12, 20) holds only the unseen action
    assert len(WindowDataset(vs, ["Seen"], cfg, training=False).items) == 3  # detection sees every window


def test_lr_schedule_warms_up_then_decays_by_cosine():
    # 100 steps, 10% warm-up: 10 warm-up steps (1/10 .. 10/10), then cosine over the remaining 90.
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(99, 100, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(500, 100, 0.1) == pytest.approx(0.0)  # past the end: stays at zero


def test_param_groups_give_head_prompt_and_text_their_own_rates(tiny_clip_name, tiny_clip):
    model = _model(tiny_clip_name, tiny_clip, freeze_text_encoder=False)  # the tower has its own group when tuned
    groups = {g["name"]: g for g in param_groups(model, TrainConfig(lr=1e-4, lr_prompt=1e-3, lr_text=1e-6))}
    assert {g: groups[g]["lr"] for g in groups} == {"head": 1e-4, "head_no_decay": 1e-4, "prompt": 1e-3,
                                                    "text": 1e-6}
    ids = {g: {id(p) for p in groups[g]["params"]} for g in groups}
    assert ids["prompt"] == {id(model.text_encoder.context), id(model.text_encoder.background)}
    assert id(model.text_encoder.transformer.resblocks[0].attn.in_proj_weight) in ids["text"]
    assert id(model.mask_localizer.query.weight) in ids["head"]
    assert id(model.mask_localizer.offset_bias) in ids["head_no_decay"]
    assert groups["head_no_decay"]["weight_decay"] == 0 and groups["text"]["weight_decay"] == 0
    every = {id(p) for p in model.parameters() if p.requires_grad}
    assert set().union(*ids.values()) == every and sum(map(len, ids.values())) == len(every)


def test_detections_on_unseen_actions_are_not_counted_in_model_selection():
    assert _covered(10.0, 20.0, [(8.0, 17.0)]) == pytest.approx(0.7, abs=0.03)
    assert _covered(10.0, 20.0, [(30.0, 40.0)]) == 0.0


# ----------------------------------------------------------------- a small training run that must localize


def _synthetic(root: Path, clip_name: str, n_train: int, seed: int = 0) -> tuple[Path, Path, list]:
    """Videos of 32 rows at 1 fps: class A or B instances of 3-7 s at random places on a drifting background."""
    rng = np.random.default_rng(seed)
    protos = {c: rng.standard_normal(32) * 1.5 for c in ("A", "B")}
    db, test_instances = {}, [(4.0, 9.0, "A"), (18.0, 24.0, "A")]  # the held-out video: two A's in one window
    for i in range(n_train + 1):
        vid = f"v{i}" if i < n_train else "test"
        inst = []
        if i < n_train:
            t = float(rng.integers(1, 5))
            while t < 26:
                length = float(rng.integers(3, 8))
                inst.append((t, min(t + length, 31.0), str(rng.choice(["A", "B"]))))
                t += length + float(rng.integers(2, 7))
        else:
            inst = test_instances
        x = rng.standard_normal(32) + np.cumsum(0.15 * rng.standard_normal((32, 32)), axis=0)  # drifting bg
        for s, e, c in inst:
            x[int(s):int(e)] = protos[c] + 0.3 * rng.standard_normal(32)
        x += 0.2 * rng.standard_normal(x.shape)
        write_features(root / "feats" / f"{vid}.npy", x.astype(np.float32), {
            "fps": 1.0, "timestamps": list(map(float, range(32))), "duration": 32.0, "source": f"{vid}.mp4",
            "clip_model": clip_name, "clip_weights": "random", "num_frames": 32})
        db[vid] = {"subset": "test" if vid == "test" else "val", "duration": 32.0,
                   "annotations": [{"segment": [s, e], "label": c} for s, e, c in inst]}
    ann = root / "ann.json"
    ann.write_text(json.dumps({"database": db}))
    return root / "feats", ann, test_instances


def test_small_training_run_localizes_two_instances_of_one_class_as_two_segments(tmp_path, tiny_clip,
                                                                                    tiny_clip_name):
    feats, ann_path, truth = _synthetic(tmp_path, tiny_clip_name, n_train=24)
    ann = parse_annotations(json.loads(ann_path.read_text()))
    data_cfg = DataConfig(num_snippets=32, overlap=0.5)
    result = train(feats, ann.select_subset("val"), ["A", "B"], tmp_path / "m.pt", tiny_clip, tiny_clip_name,
                   model_cfg=ModelConfig(**TINY), data_cfg=data_cfg,
                   train_cfg=TrainConfig(epochs=25, lr=2e-3, lr_prompt=2e-3, batch_size=4, val_fraction=0.0),
                   progress=False)
    masks = [h["mask"] for h in result.history]
    assert masks[-1] < 0.6 * masks[0], masks  # the mask loss falls (the paper's head stayed flat)
    model, info = load_checkpoint(result.best_path)
    vs = load_video_set(feats, [ann.videos["test"]])
    preds, _ = predict(model, ["A", "B"], vs, info.data_config, STALELoss(info.model_config, info.loss_config),
                       "cpu", 4, detect_cfg=info.detect_config)
    top = [p for p in preds["test"] if p[0] == "A"][:4]
    matched = []
    for s, e, _ in truth:
        ious = [_tiou(s, e, ps, pe) for _, ps, pe, _ in top]
        assert max(ious) >= 0.5, (s, e, top)
        matched.append(int(np.argmax(ious)))
    assert matched[0] != matched[1]  # two segments, not one covering both


def _tiou(s1, e1, s2, e2) -> float:
    return max(0.0, min(e1, e2) - max(s1, s2)) / (max(e1, e2) - min(s1, s2))
