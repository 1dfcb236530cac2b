"""Training (stale_cli/model/train.py): a tiny model overfits synthetic features, the recipe's parts (learning-rate
schedule, parameter groups, model selection), a small run that must localize, the CLI end to end and its bad inputs,
2-process DDP."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
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

from feature_files import error_lines  # tests/ is on sys.path (rootdir conftest)
from tiny_stale import TINY_STALE, tiny_stale

THUMOS_CLASSES = json.loads((Path(__file__).parent / "fixtures" / "thumos14_mini.json").read_text())["classes"]
FPS, ROWS = 2.0, 40  # 20-second synthetic videos, one feature row per half second
# Instances (start_s, end_s, label); HighJump and Diving are seen classes of thumos14/75_25/0, PoleVault unseen.
VIDEOS = {
    "v0": [(3, 8, "HighJump"), (12, 15, "Diving")],
    "v1": [(2, 6, "Diving"), (10, 16, "HighJump")],
    "v2": [(5, 9, "HighJump"), (13, 17, "PoleVault")],
    "v3": [(1, 4, "Diving"), (9, 13, "Diving")],
}
TINY = dict(encoder_layers=1, num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4,
            dropout=0.0, consistency_topk=4)


def make_dataset(root: Path, clip_name: str, dim: int = 32, videos=VIDEOS, seed: int = 0) -> tuple[Path, Path]:
    """Features where each class (and background) has its own prototype vector plus noise; annotations beside."""
    rng = np.random.default_rng(seed)
    labels = sorted({lab for inst in videos.values() for _, _, lab in inst})
    protos = {lab: rng.standard_normal(dim) * 2 for lab in ["background", *labels]}
    stamps = np.arange(ROWS) / FPS
    db = {}
    for vid, inst in videos.items():
        feats = np.tile(protos["background"], (ROWS, 1))
        for s, e, lab in inst:
            feats[(stamps >= s) & (stamps < e)] = protos[lab]  # row k is the frame at k / FPS
        feats += 0.3 * rng.standard_normal(feats.shape)
        write_features(root / "feats" / f"{vid}.npy", feats, {
            "fps": FPS, "timestamps": stamps.tolist(), "duration": ROWS / FPS, "source": f"{vid}.mp4",
            "clip_model": clip_name, "clip_weights": "random", "num_frames": ROWS})
        db[vid] = {"subset": "val", "duration": ROWS / FPS,
                   "annotations": [{"segment": [s, e], "label": lab} for s, e, lab in inst]}
    db["t0"] = {"subset": "test", "duration": 20.0, "annotations": [{"segment": [1, 2], "label": "PoleVault"}]}
    ann = root / "ann.json"
    ann.write_text(json.dumps({"classes": THUMOS_CLASSES, "database": db}))
    return root / "feats", ann


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


# ---------------------------------------------------------------- CLI


def run_cli(*args: str):
    from stale_cli.cli import app

    return CliRunner().invoke(app, ["train", *map(str, args)])


def cli_args(tmp_path, feats, ann, clip_name, clip_weights, *extra):
    return ["--features", feats, "--annotations", ann, "--out", tmp_path / "w" / "m.pt", "--clip-model", clip_name,
            "--clip-weights", clip_weights, "--device", "cpu", "--epochs", "2", "--batch-size", "4", "--no-progress",
            *extra]


def assert_one_line_error(result, pattern: str):
    import re

    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]) and "Traceback" not in result.output
    err = errors[0]
    assert re.search(pattern, err.replace("\n", " ")), err


def test_cli_trains_on_a_split_writes_checkpoints_and_resumes(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--split", "thumos14/75_25/0",
                          "--val-fraction", "0.25"))
    assert r.exit_code == 0, r.output
    assert "best epoch" in r.stdout and "held-out mAP@0.5" in r.stdout
    ckpt, info = read_checkpoint(tmp_path / "w" / "m.pt")
    assert len(info.class_names) == 15 and "PoleVault" not in info.class_names and "HighJump" in info.class_names
    assert info.feature_fps == FPS and info.feature_dim == 32 and info.clip_model == tiny_clip_name
    assert info.clip_weights.endswith("tiny_clip.pt") and info.data_config.num_snippets == 256
    last = tmp_path / "w" / "m.last.pt"
    _, last_info = read_checkpoint(last)
    assert last_info.epoch == 2 and "optimizer" in last_info.extra
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--split", "thumos14/75_25/0",
                          "--val-fraction", "0.25", "--resume", last, "--epochs", "3"))  # the later --epochs wins
    assert r.exit_code == 0, r.output
    _, resumed = read_checkpoint(last)
    assert resumed.epoch == 3 and [h["epoch"] for h in resumed.extra["history"]] == [1, 2, 3]


def test_cli_rerun_resumes_and_refuses_other_settings(tmp_path, tiny_clip_name, tiny_clip_weights):
    """The same command again continues from <out>.last.pt; other settings are one error line; --fresh restarts."""
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    last = tmp_path / "w" / "m.last.pt"
    args = cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--split", "thumos14/75_25/0")
    args[args.index("--epochs") + 1] = "1"
    assert run_cli(*args).exit_code == 0
    assert read_checkpoint(last)[1].epoch == 1
    args[args.index("--epochs") + 1] = "2"
    r = run_cli(*args)  # an interrupted run, rerun: it goes on at epoch 2 (the --epochs given now)
    assert r.exit_code == 0, r.output
    _, info = read_checkpoint(last)
    assert info.epoch == 2 and [h["epoch"] for h in info.extra["history"]] == [1, 2]
    assert "resuming from" in r.stderr
    r = run_cli(*args)  # finished: nothing to do, nothing rewritten
    assert r.exit_code == 0 and "nothing to do" in r.stderr and read_checkpoint(last)[1].epoch == 2

    r = run_cli(*args, "--dropout", "0.3")
    assert_one_line_error(r, r"m\.last\.pt holds a training run with other settings \(model\.dropout\).*--fresh.*--out")
    other = tmp_path / "other.json"
    db = json.loads(ann.read_text())
    db["database"]["v0"]["annotations"][0]["segment"] = [3, 9]
    other.write_text(json.dumps(db))
    r = run_cli(*[other if a == ann else a for a in args])
    assert_one_line_error(r, r"other settings \(annotations\)")
    assert read_checkpoint(last)[1].epoch == 2  # refused runs leave it alone

    args[args.index("--epochs") + 1] = "1"
    r = run_cli(*args, "--fresh")
    assert r.exit_code == 0, r.output
    assert read_checkpoint(last)[1].epoch == 1


def test_cli_never_replaces_a_later_epoch_with_an_earlier_one(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    last = tmp_path / "w" / "m.last.pt"
    args = cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--split", "thumos14/75_25/0")
    args[args.index("--epochs") + 1] = "1"
    assert run_cli(*args).exit_code == 0
    early = tmp_path / "early.pt"
    early.write_bytes(last.read_bytes())  # epoch 1
    args[args.index("--epochs") + 1] = "2"
    assert run_cli(*args).exit_code == 0 and read_checkpoint(last)[1].epoch == 2
    before = last.read_bytes()
    r = run_cli(*args, "--resume", early, "--epochs", "3")  # would write epoch 2 over epoch 2, then go on
    assert_one_line_error(r, r"holds epoch 2, later than epoch 1 of .*early\.pt")
    assert last.read_bytes() == before


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


def test_cli_reports_videos_without_features_and_goes_on(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    (feats / "v3.npy").unlink()
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--epochs", "1"))
    assert r.exit_code == 0, r.output
    assert "warning: 1 annotated video(s) had no features" in r.stderr  # a note on stderr, not a result


def test_cli_balances_classes_by_default_and_records_it(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    for sub, extra, balanced in (("on", [], True), ("off", ["--no-balance-classes"], False)):
        r = run_cli(*cli_args(tmp_path / sub, feats, ann, tiny_clip_name, tiny_clip_weights, "--epochs", "1", *extra))
        assert r.exit_code == 0, r.output
        _, info = read_checkpoint(tmp_path / sub / "w" / "m.pt")
        recorded = info.extra["train_config"]
        assert recorded["balance_classes"] is balanced and recorded["epochs"] == 1


def test_cli_bad_inputs_are_one_line_errors(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    args = lambda *extra, f=feats, a=ann: cli_args(tmp_path, f, a, tiny_clip_name, tiny_clip_weights, *extra)  # noqa: E731

    assert_one_line_error(run_cli(*args("--split", "thumos14/90_10/0")), r"unknown split .*thumos14 or activitynet13")

    # A split class absent from the annotations: a file without the THUMOS14 class list.
    bare = tmp_path / "bare.json"
    db = json.loads(ann.read_text())["database"]
    bare.write_text(json.dumps({"database": db}))
    assert_one_line_error(run_cli(*args("--split", "thumos14/75_25/0", a=bare)),
                          r"split thumos14/75_25/0: classes .*'BasketballDunk'.* not found in the annotations")

    # Empty training set: classes with no instance in the training videos.
    classes = tmp_path / "classes.txt"
    classes.write_text("Billiards\nGolfSwing\n")
    assert_one_line_error(run_cli(*args("--classes-file", classes)), r"empty training set: none of the 4 training videos")

    # No feature file for any annotated video.
    empty = tmp_path / "nofeats"
    empty.mkdir()
    assert_one_line_error(run_cli(*args(f=empty)), r"none of the 4 annotated videos has a feature file")

    # A corrupt feature file is named.
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in feats.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "v2.npy").write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(run_cli(*args(f=broken)), r"v2\.npy: corrupt feature file")


def test_cli_resume_with_other_feature_width_is_refused(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path / "a", tiny_clip_name, dim=32)
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--epochs", "1"))
    assert r.exit_code == 0, r.output
    wide, _ = make_dataset(tmp_path / "b", tiny_clip_name, dim=48)
    r = run_cli(*cli_args(tmp_path, wide, ann, tiny_clip_name, tiny_clip_weights, "--resume",
                          tmp_path / "w" / "m.last.pt"))
    assert_one_line_error(r, r"trained on 32-dimensional features but those in .* are 48-dimensional")


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


def test_train_out_that_is_a_directory_is_refused_before_training(tmp_path):
    feats, ann = make_dataset(tmp_path, "stale-tiny")
    (tmp_path / "w").mkdir()
    r = CliRunner().invoke(app, ["train", "--features", str(feats), "--annotations", str(ann), "--out",
                                 str(tmp_path / "w"), "--no-progress"])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "is a directory" in r.stderr, r.output


def _classes(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("HighJump\nDiving\n")
    return path


def test_full_disk_while_saving_a_checkpoint_keeps_the_last_good_one(tmp_path, tiny_clip_name, tiny_clip_weights,
                                                                     monkeypatch):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    real_save, saves = torch.save, []

    def save(obj, f, *a, **kw):  # epoch 1 writes .last.pt (the best only at the last epoch); epoch 2's finds
        saves.append(1)  # the disk full
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    r = CliRunner().invoke(app, ["train", *map(str, cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights,
                                                             "--classes-file", _classes(tmp_path)))])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = error_lines(r)
    assert "m.last.pt" in line and "disk full" in line and "left as it was (the last good checkpoint)" in line
    _, info = read_checkpoint(tmp_path / "w" / "m.last.pt")
    assert info.epoch == 1
    assert not [p for p in (tmp_path / "w").iterdir() if p.suffix == ".tmp"]


def test_train_resume_from_a_checkpoint_of_another_shape_is_one_line(tmp_path, tiny_clip_name, tiny_clip_weights):
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--epochs", "1"))
    assert r.exit_code == 0, r.output
    last = tmp_path / "w" / "m.last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    key = next(k for k, v in ck["state_dict"].items() if v.ndim == 2 and not k.startswith("text_encoder"))
    ck["state_dict"][key] = torch.zeros(3, 5)  # one tensor of another shape
    torch.save(ck, tmp_path / "shape.pt")
    ck = torch.load(last, map_location="cpu", weights_only=True)
    ck["extra"]["optimizer"]["param_groups"] = ck["extra"]["optimizer"]["param_groups"][:1]  # another optimizer
    torch.save(ck, tmp_path / "optim.pt")
    for bad, message in (("shape.pt", "weights do not fit the model"), ("optim.pt", "optimizer state does not fit")):
        r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--resume", tmp_path / bad,
                              "--epochs", "2", "--output", tmp_path / "w2" / "m.pt"))
        errors = error_lines(r)
        assert r.exit_code == 1 and len(errors) == 1 and message in errors[0], r.output
        assert "Traceback" not in r.output


def test_train_out_of_memory_is_one_line(tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.model.train as training

    def no_memory(*args, **kwargs):  # what torch's CPU allocator raises for a --batch-size the RAM cannot hold
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 137438953472 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(training, "_run_epoch", no_memory)
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    r = run_cli(*cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--epochs", "1"))
    errors = error_lines(r)
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
    assert "out of memory at epoch 1 with --batch-size 4" in errors[0] and "(e.g. 2)" in errors[0]
    assert "no checkpoint was written" in errors[0]


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
