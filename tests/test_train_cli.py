"""``stale train`` end to end with CliRunner (stale_cli/cli/train.py over stale_cli/model/train.py): training on a
split, resuming a run and refusing to resume one of other settings, class balancing, and bad inputs, a full disk or
too little memory as one error line each."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.model.checkpoint import read_checkpoint

from feature_files import error_lines  # tests/ is on sys.path (rootdir conftest)
from tiny_stale import FPS, make_dataset


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


def one_epoch_run(tmp_path, tiny_clip_name, tiny_clip_weights) -> tuple:
    """A dataset and the arguments of `stale train` for one epoch on split 0: (annotations, <out>.last.pt, args)."""
    feats, ann = make_dataset(tmp_path, tiny_clip_name)
    args = cli_args(tmp_path, feats, ann, tiny_clip_name, tiny_clip_weights, "--split", "thumos14/75_25/0")
    args[args.index("--epochs") + 1] = "1"
    return ann, tmp_path / "w" / "m.last.pt", args


def test_cli_rerun_resumes_and_refuses_other_settings(tmp_path, tiny_clip_name, tiny_clip_weights):
    """The same command again continues from <out>.last.pt; other settings are one error line; --fresh restarts."""
    ann, last, args = one_epoch_run(tmp_path, tiny_clip_name, tiny_clip_weights)
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
    _, last, args = one_epoch_run(tmp_path, tiny_clip_name, tiny_clip_weights)
    assert run_cli(*args).exit_code == 0
    early = tmp_path / "early.pt"
    early.write_bytes(last.read_bytes())  # epoch 1
    args[args.index("--epochs") + 1] = "2"
    assert run_cli(*args).exit_code == 0 and read_checkpoint(last)[1].epoch == 2
    before = last.read_bytes()
    r = run_cli(*args, "--resume", early, "--epochs", "3")  # would write epoch 2 over epoch 2, then go on
    assert_one_line_error(r, r"holds epoch 2, later than epoch 1 of .*early\.pt")
    assert last.read_bytes() == before


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
