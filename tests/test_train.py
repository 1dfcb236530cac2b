"""Training (stale_cli/model/train.py), called as a library: a tiny model overfits synthetic features, the recipe's
parts (learning-rate schedule, parameter groups, model selection), a small run that must localize, what stops a run
(NaN loss, features of another CLIP, a later epoch written by another run), 2-process DDP. ``stale train`` end to end
is in test_train_cli.py."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from stale_cli.model.checkpoint import load_checkpoint, read_checkpoint
from stale_cli.model.config import ModelConfig
from stale_cli.model.data.annotations import parse_annotations
from stale_cli.model.data.dataset import load_video_set
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.losses import STALELoss
from stale_cli.model.train import (
    TrainConfig, _covered, lr_factor, param_groups, predict, split_videos, train, validate,
)
from stale_cli.sidecar import write_features

from tiny_stale import ROWS, TINY_STALE, VIDEOS, make_dataset, tiny_stale  # tests/ is on sys.path (rootdir conftest)


TINY = dict(encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
            dropout=0.0, consistency_topk=4)


def test_split_videos_is_deterministic_and_disjoint():
    ids = [f"v{i}" for i in range(20)]
    tr, va = split_videos(ids, 0.1, seed=3)
    assert (len(tr), len(va)) == (18, 2) and not set(tr) & set(va)
    assert split_videos(list(reversed(ids)), 0.1, seed=3) == (tr, va)
    assert split_videos(["a"], 0.5, 0) == (["a"], [])


def test_tiny_model_overfits_and_detects_its_training_segments(tmp_path, tiny_clip, tiny_clip_name):
    feats, ann_path = make_dataset(tmp_path, tiny_clip_name)
    ann = parse_annotations(json.loads(ann_path.read_text())).select_subset("val")
    classes = ["HighJump", "Diving"]  # PoleVault is not in the vocabulary: background
    data_cfg = DataConfig(num_snippets=ROWS, overlap=0.5)  # one window per video
    result = train(feats, ann, classes, tmp_path / "m.pt", tiny_clip, tiny_clip_name, model_cfg=ModelConfig(**TINY),
                   data_cfg=data_cfg, train_cfg=TrainConfig(epochs=30, lr=3e-3, batch_size=1, val_fraction=0.0),
                   progress=False)
    first, last = result.history[0]["total"], result.history[-1]["total"]
    assert last < 0.3 * first, (first, last)
    assert result.best_epoch == 30 and result.score_name == "last epoch"
    model, info = load_checkpoint(result.best_path)
    vs = load_video_set(feats, list(ann.videos.values()))
    criterion = STALELoss(info.model_config, info.loss_config)
    preds, _ = predict(model, classes, vs, info.data_config, criterion, "cpu", 8, detect_cfg=info.detect_config)
    # Every training segment of a training class is found among the video's 10 best detections (tIoU >= 0.5).
    for vid, instances in VIDEOS.items():
        top = preds[vid][:10]
        for s, e, lab in instances:
            if lab in classes:
                ious = [segment_tiou(s, e, ps, pe) for pl, ps, pe, _ in top if pl == lab]
                assert max(ious, default=0) >= 0.5, (vid, (s, e, lab), top)
        assert all(pl in classes for pl, *_ in preds[vid])
    assert validate(model, classes, vs, info.data_config, criterion, "cpu", 8,
                    detect_cfg=info.detect_config)["val_map50"] >= 0.5


def segment_tiou(s1: float, e1: float, s2: float, e2: float) -> float:
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    return inter / (max(e1, e2) - min(s1, s2))


def test_other_run_writing_a_later_epoch_is_not_overwritten(tmp_path, tiny_clip, tiny_clip_name, monkeypatch):
    """Two runs on one --out: when the other has written a later epoch, this one stops instead of replacing it."""
    import stale_cli.model.train as train_module
    from stale_cli.errors import CheckpointError

    feats, ann_path = make_dataset(tmp_path, tiny_clip_name)
    ann = parse_annotations(json.loads(ann_path.read_text())).select_subset("val")
    common = dict(model_cfg=ModelConfig(**TINY), data_cfg=DataConfig(num_snippets=32), progress=False)
    out = tmp_path / "m.pt"
    train(feats, ann, ["HighJump", "Diving"], out, tiny_clip, tiny_clip_name,
          train_cfg=TrainConfig(epochs=3, batch_size=2), **common)
    later = out.with_name("m.last.pt").read_bytes()  # epoch 3, as if another run had written it meanwhile
    real_save = train_module.save_checkpoint

    def save_then_other_run_writes(path, *a, **kw):
        real_save(path, *a, **kw)
        if Path(path).name == "m.last.pt":
            Path(path).write_bytes(later)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_other_run_writes)
    with pytest.raises(CheckpointError, match="now holds epoch 3, written by another run"):
        train(feats, ann, ["HighJump", "Diving"], out, tiny_clip, tiny_clip_name,
              train_cfg=TrainConfig(epochs=2, batch_size=2), fresh=True, **common)
    assert train_module.saved_epoch(out.with_name("m.last.pt")) == 3


def test_features_of_another_clip_are_refused(tmp_path, tiny_clip, tiny_clip_name):
    feats, ann_path = make_dataset(tmp_path, "ViT-B-32")  # same width as the text tower, other CLIP
    ann = parse_annotations(json.loads(ann_path.read_text())).select_subset("val")
    from stale_cli.errors import DataError

    with pytest.raises(DataError, match=r"come from CLIP ViT-B-32 but the text encoder is 'stale-tiny'"):
        train(feats, ann, ["HighJump"], tmp_path / "m.pt", tiny_clip, tiny_clip_name, model_cfg=ModelConfig(**TINY),
              data_cfg=DataConfig(num_snippets=32), train_cfg=TrainConfig(epochs=1), progress=False)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_clip, tiny_clip_name):
    from stale_cli.model.config import LossConfig
    from stale_cli.model.train import TrainingError

    feats, ann_path = make_dataset(tmp_path, tiny_clip_name)
    ann = parse_annotations(json.loads(ann_path.read_text())).select_subset("val")
    common = dict(model_cfg=ModelConfig(**TINY), data_cfg=DataConfig(num_snippets=32), progress=False)
    nan_loss = LossConfig(weight_mask=float("nan"))  # a loss that is NaN from the first step
    with pytest.raises(TrainingError, match=r"loss became NaN/inf at epoch 1 step 1 .*no checkpoint was written"):
        train(feats, ann, ["HighJump", "Diving"], tmp_path / "m.pt", tiny_clip, tiny_clip_name, loss_cfg=nan_loss,
              train_cfg=TrainConfig(epochs=1, val_fraction=0.0), **common)
    assert not (tmp_path / "m.pt").exists()
    good = train(feats, ann, ["HighJump", "Diving"], tmp_path / "m.pt", tiny_clip, tiny_clip_name,
                 train_cfg=TrainConfig(epochs=1, val_fraction=0.0), **common)
    before = good.last_path.read_bytes()
    with pytest.raises(TrainingError, match=r"m\.last\.pt is left as it was"):
        train(feats, ann, ["HighJump", "Diving"], tmp_path / "m.pt", tiny_clip, tiny_clip_name, loss_cfg=nan_loss,
              train_cfg=TrainConfig(epochs=1, val_fraction=0.0), **common)
    assert good.last_path.read_bytes() == before and read_checkpoint(good.best_path)[1].epoch == 1


# ---------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, root: str, clip_weights: str) -> None:
    import open_clip

    from conftest import TINY_CLIP_NAME, _register_tiny_clip

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _register_tiny_clip(Path(root))
    clip = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    clip.load_state_dict(torch.load(clip_weights, weights_only=True))
    ann = parse_annotations(json.loads((Path(root) / "ann.json").read_text())).select_subset("val")
    result = train(Path(root) / "feats", ann, ["HighJump", "Diving"], Path(root) / "ddp.pt", clip, TINY_CLIP_NAME,
                   model_cfg=ModelConfig(**TINY), data_cfg=DataConfig(num_snippets=16, overlap=0.5),
                   train_cfg=TrainConfig(epochs=2, lr=1e-3, batch_size=2, val_fraction=0.25), progress=False)
    # Each rank saw other windows; equal weights afterwards mean DDP averaged the gradients.
    total = sum(float(p.detach().double().sum()) for p in result.model.parameters())
    (Path(root) / f"rank{rank}.json").write_text(json.dumps({"sum": total, "epochs": len(result.history)}))


def test_two_process_ddp_with_gloo(tmp_path, tiny_clip_name, tiny_clip_weights):
    import torch.multiprocessing as mp

    make_dataset(tmp_path, tiny_clip_name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(tiny_clip_weights)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["epochs"] == r1["epochs"] == 2
    assert r0["sum"] == pytest.approx(r1["sum"], rel=1e-6)
    _, info = read_checkpoint(tmp_path / "ddp.pt")
    assert info.epoch >= 1 and info.class_names == ("HighJump", "Diving")


def test_default_epochs_reach_min_steps():
    from stale_cli.model.train import default_epochs

    assert default_epochs(40) == 15  # a THUMOS14-sized set: 600 steps, the paper's 15 epochs
    assert default_epochs(16) == 15  # exactly 240 steps
    assert default_epochs(8) == 30  # 40 videos: 30 epochs of 8 steps
    assert default_epochs(7) == 35  # ceil(240 / 7)
    assert default_epochs(0) == 240  # never divides by zero


# ---------------------------------------------------------------- the training recipe's parts


def test_lr_schedule_warms_up_then_decays_by_cosine():
    # 100 steps, 10% warm-up: 10 warm-up steps (1/10 .. 10/10), then cosine over the remaining 90.
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(99, 100, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(500, 100, 0.1) == pytest.approx(0.0)  # past the end: stays at zero


def test_param_groups_give_head_prompt_and_text_their_own_rates(tiny_clip_name, tiny_clip):
    model = tiny_stale(tiny_clip_name, tiny_clip, freeze_text_encoder=False)  # the tower has its own group when tuned
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


# ---------------------------------------------------------------- a small training run that must localize


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
                   model_cfg=ModelConfig(**TINY_STALE), data_cfg=data_cfg,
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
