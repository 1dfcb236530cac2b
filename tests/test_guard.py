"""The one rule for every file a command writes (stale_cli/guard.py): never an input or one of its companions (a
feature sidecar, the classes file, a checkpoint, an @list, CLIP weights, annotations), never another option's output
or a feature sidecar; and devices at an output path written into, never replaced, a full one one error line."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.fileio import write_text_atomic
from stale_cli.sidecar import read_features

from feature_files import (  # tests/ is on sys.path (rootdir conftest)
    contents, detect_args, detect_known, error_lines, features,
)

ANNOTATIONS = Path(__file__).parent / "fixtures" / "thumos14_mini.json"


@pytest.fixture
def run(tiny_clip_name, tiny_clip_weights):
    def invoke(command, *args, clip=True):
        extra = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights)] if clip else []
        r = CliRunner().invoke(app, [command, *map(str, args), *extra])
        assert "Traceback" not in r.output and not isinstance(r.exception, Exception) or r.exit_code in (0, 1), r
        assert not (r.exception and not isinstance(r.exception, SystemExit)), r.exception
        return r
    return invoke


# ---------------------------------------------------------------- detect's outputs against its inputs


def test_html_is_checked_against_the_inputs(run, random_feats, tmp_path, videos):
    video = tmp_path / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    before = contents(video, random_feats / "v0.json", random_feats / "v1.json")
    r = run(*detect_args(video, "--html", video))
    assert r.exit_code == 1 and "--html" in r.stderr and "is the input" in r.stderr
    r = run(*detect_args(random_feats / "v0.npy", "--html", random_feats / "v0.json"))
    assert r.exit_code == 1 and "is the sidecar of the input v0.npy" in r.stderr
    # a sidecar, though not of an input
    r = run(*detect_args(random_feats / "v0.npy", "--html", random_feats / "v1.json"))
    assert r.exit_code == 1 and "--html" in r.stderr and "feature file v1.npy" in r.stderr
    assert len(error_lines(r)) == 1 and contents(video, random_feats / "v0.json", random_feats / "v1.json") == before


def test_output_is_checked_against_classes_checkpoint_list_and_weights(run, random_feats, tmp_path, tiny_clip_weights):
    classes = tmp_path / "classes.txt"
    classes.write_text("high jump\npole vault\n")
    checkpoint = tmp_path / "ck" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not read: refused before any model loads")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{random_feats / 'v0.npy'}\n")
    weights = tmp_path / "clip.pt"
    shutil.copy(tiny_clip_weights, weights)
    before = contents(classes, checkpoint, listing, weights)
    cases = [
        (["detect", random_feats / "v0.npy", "--classes-file", classes, "-o", classes], "the classes file"),
        ([*detect_args(random_feats / "v0.npy", "--checkpoint", checkpoint, "-o", checkpoint)], "the checkpoint"),
        ([*detect_args(f"@{listing}", "-o", tmp_path / "." / "inputs.txt")], "the list file"),
        ([*detect_args(f"@{listing}", "--plot", listing)], "the list file"),
    ]
    for args, what in cases:
        r = run(*args, "--no-progress")
        assert r.exit_code == 1 and what in r.stderr and len(error_lines(r)) == 1, (args, r.output)
    r = CliRunner().invoke(app, [*map(str, detect_args(random_feats / "v0.npy", "-o", weights)), "--clip-model",
                                 "stale-tiny", "--clip-weights", str(weights)])
    assert r.exit_code == 1 and "the CLIP weights" in r.stderr
    assert contents(classes, checkpoint, listing, weights) == before


def test_two_options_writing_one_file_are_refused_and_plots_are_named(run, random_feats, tmp_path):
    out = tmp_path / "out.json"
    r = run(*detect_args(random_feats / "v0.npy", "-o", out, "--html", out))
    assert r.exit_code == 1 and "--html" in r.stderr and "--output" in r.stderr and not out.exists()
    r = run(*detect_args(random_feats / "v0.npy", random_feats / "v1.npy", "--plot", tmp_path / "p.png", "--html",
                         tmp_path / "p_v1.png"))
    assert r.exit_code == 1 and "--plot" in r.stderr and "--html" in r.stderr

    pytest.importorskip("matplotlib")
    r = run(*detect_args(random_feats, "-o", out, "--plot", tmp_path / "p.png"))
    assert r.exit_code == 0, r.output
    wrote = [ln.removeprefix("wrote ") for ln in r.stderr.splitlines() if ln.startswith("wrote ")]
    assert sorted(wrote) == sorted([str(out), str(tmp_path / "p_v0.png"), str(tmp_path / "p_v1.png")])


# ---------------------------------------------------------------- train, and the other commands


def test_train_out_is_checked_against_annotations_and_its_last_companion(run, random_feats, tmp_path):
    ann = tmp_path / "ann.json"
    shutil.copy(ANNOTATIONS, ann)
    r = run("train", "--features", random_feats, "--annotations", ann, "--out", ann, "--epochs", "1", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr, r.output
    last = tmp_path / "model.last.json"  # what --out model.json writes every epoch
    shutil.copy(ANNOTATIONS, last)
    r = run("train", "--features", random_feats, "--annotations", last, "--out", tmp_path / "model.json", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr and len(error_lines(r)) == 1
    assert ann.read_bytes() == last.read_bytes() == ANNOTATIONS.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "feats", "model.last.json"]
    r = run("train", "--features", random_feats, "--annotations", ann, "--out", random_feats / "v0.json", clip=False)
    assert r.exit_code == 1 and "feature" in r.stderr and (random_feats / "v0.json").is_file()
    read_features(random_feats / "v0.npy")


def test_zero_shot_and_extract_check_their_outputs(run, tmp_path, videos):
    work = tmp_path / "work"
    work.mkdir()
    ann = work / "results.json"
    shutil.copy(ANNOTATIONS, ann)
    r = run("zero-shot", "--dataset", "thumos14", "--features", tmp_path, "-a", ann, "--work-dir", work,
            "--splits", "0", clip=False)
    assert r.exit_code == 1 and "the annotations file" in r.stderr and ann.read_bytes() == ANNOTATIONS.read_bytes()

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(videos["single"]["path"], tmp_path / "inputs.mp4")
    listing = out / "inputs.json"  # an @list file where the features of inputs.mp4 would go
    listing.write_text(f"{tmp_path / 'inputs.mp4'}\n")
    r = run("extract-features", f"@{listing}", "--out", out, "--no-progress")
    assert r.exit_code == 1 and "the list file" in r.stderr and listing.read_text().startswith(str(tmp_path))


# ---------------------------------------------------------------- extract then detect into the same folder


def test_detect_output_never_lands_on_feature_sidecars(run, tmp_path, videos):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(videos["single"]["path"], src / "bikes.mp4")
    out = tmp_path / "out"
    assert run("extract-features", src, "--out", out, "--no-progress").exit_code == 0
    before = contents(out / "bikes.json", out / "bikes.npy")
    r = run(*detect_args(src, "-o", out))
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "bikes.json" in r.stderr, r.output
    assert "sidecar" in r.stderr and contents(out / "bikes.json", out / "bikes.npy") == before
    read_features(out / "bikes.npy")
    assert run(*detect_args(src, "-o", out, "--format", "csv")).exit_code == 0  # another extension is fine

    lone = tmp_path / "lone.json"  # a sidecar whose array is elsewhere still reads as one
    lone.write_text(json.dumps(features()[1]))
    r = run(*detect_args(out / "bikes.npy", "-o", lone))
    assert r.exit_code == 1 and "a feature sidecar" in r.stderr and json.loads(lone.read_text())["fps"] == 4.0


# ---------------------------------------------------------------- devices: written into, never replaced


@pytest.fixture
def devices(tmp_path):
    """Private copies of /dev/null and /dev/full (root only: mknod)."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    made = {}
    for name, minor in (("null", 3), ("full", 7)):
        made[name] = tmp_path / f"dev-{name}"
        try:
            os.mknod(made[name], 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        except PermissionError:
            pytest.skip("mknod not permitted here")
    return made


def test_devices_are_written_into_and_a_full_one_is_one_line(run, devices, random_feats, tmp_path):
    write_text_atomic(devices["null"], "gone")
    assert stat.S_ISCHR(os.lstat(devices["null"]).st_mode)
    with pytest.raises(InputError, match="No space left on device; free some space"):
        write_text_atomic(devices["full"], "x")
    r = run(*detect_args(random_feats, "-o", devices["full"]))
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "No space left" in r.stderr, r.output
    assert stat.S_ISCHR(os.lstat(devices["full"]).st_mode)
    r = run(*detect_args(random_feats, "-o", devices["null"], "--html", devices["null"].with_name("r.html")))
    assert r.exit_code == 0 and stat.S_ISCHR(os.lstat(devices["null"]).st_mode), r.output
    assert not list(tmp_path.glob(".dev-null*"))  # no journal or lock beside a device


# ---------------------------------------------------------------- evaluate's output; detect's beside its features


def test_detect_refuses_to_write_over_its_inputs(feats, tmp_path, videos, tiny_clip_name, tiny_clip_weights):
    sidecar = (feats / "v0.json").read_text()
    r = detect_known([feats, "-o", feats], tiny_clip_name, tiny_clip_weights)  # json into the features folder
    assert r.exit_code == 1 and "is the sidecar of the input v0.npy" in r.output
    assert (feats / "v0.json").read_text() == sidecar
    assert detect_known([feats, "-o", feats, "--format", "csv"], tiny_clip_name, tiny_clip_weights).exit_code == 0

    video = tmp_path / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    before = video.read_bytes()
    r = detect_known([video, "-o", video], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "is the input" in r.output and video.read_bytes() == before

    cache = tmp_path / "cache"
    r = detect_known([video, "--cache-features", cache, "-o", f"{cache}/"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "cached feature sidecar" in r.output and not list(cache.glob("*"))

    r = detect_known([feats / "v1.npy", "-o", tmp_path / "p.json", "--plot", feats / "v1.json"], tiny_clip_name,
               tiny_clip_weights)
    assert r.exit_code == 1 and "--plot" in r.output and "sidecar" in r.output


def test_evaluate_refuses_to_write_over_its_inputs(tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {}}))
    for target in (preds, ANNOTATIONS):
        before = target.read_text()
        r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ANNOTATIONS), "-o", str(target)])
        assert r.exit_code == 1 and "writing it would destroy it" in r.output and "Traceback" not in r.output
        assert target.read_text() == before
