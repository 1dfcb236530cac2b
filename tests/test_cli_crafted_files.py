"""Crafted input files fed to every command that reads them: checkpoints, feature sidecars, annotations, prediction
files, classes files, @lists and CLIP weights (wrong types, out of range, NaN, huge sizes, BOMs, escape sequences).
Each run ends with a non-zero status and exactly one ``error:`` line, no traceback, and leaves the directory as it
was: no output, journal, lock or work folder is made for a run that fails on its input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.sidecar import write_features

from crafted_checkpoints import CRAFTED_CHECKPOINTS, craft_checkpoint  # tests/ is on sys.path (rootdir conftest)
from feature_files import ESC_TITLE, deflate_bomb, features

BOM = b"\xef\xbb\xbf"


def snapshot(root: Path) -> dict:
    """Every file and folder below ``root``: relative path -> sha256 of the bytes (None for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sidecar_case(**change):
    def setup(d: Path) -> Path:
        write_features(d / "v.npy", *features())
        meta = json.loads((d / "v.json").read_text())
        meta.update(change)
        (d / "v.json").write_text(json.dumps(meta))
        return d / "v.npy"
    return setup


def raw_sidecar(text: bytes):
    def setup(d: Path) -> Path:
        write_features(d / "v.npy", *features())
        (d / "v.json").write_bytes(text)
        return d / "v.npy"
    return setup


def huge_header(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "v.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (10**12, 32)})
        f.write(b"\0" * 64)
    (d / "v.json").write_text(json.dumps({"fps": 4.0}))
    return d / "v.npy"


SIDECARS = {
    "fps_text": sidecar_case(fps="abc"),
    "fps_nan": raw_sidecar(b'{"fps": NaN}'),
    "fps_tiny": sidecar_case(fps=1e-300),
    "fps_list": sidecar_case(fps=[4]),
    "duration_negative": sidecar_case(duration=-1),
    "timestamps_decreasing": sidecar_case(timestamps=[(24 - k) / 4 for k in range(24)]),
    "timestamps_far_past_duration": sidecar_case(timestamps=[k * 1000.0 for k in range(24)]),
    "num_rows_huge": sidecar_case(num_rows=10**12),
    "clip_model_number": sidecar_case(clip_model=5),
    "bom_then_garbage": raw_sidecar(BOM + b"{fps: 4"),
    "escape_in_key_value": raw_sidecar(json.dumps({"fps": ESC_TITLE}).encode()),
    "not_utf8": raw_sidecar(b'{"fps": 4, "source": "caf\xe9"}'),
    "huge_header": huge_header,
}


def annotations_text(database, **extra) -> bytes:
    return json.dumps({"database": database, **extra}).encode()


def video(segment, label="A", duration=10):
    return {"v": {"subset": "test", "duration": duration, "annotations": [{"segment": segment, "label": label}]}}


ANNOTATIONS = {
    "negative_segment": annotations_text(video([-5, -2])),
    "reversed_segment": annotations_text(video([5, 2])),
    "nan_segment": b'{"database": {"v": {"subset": "test", "duration": 10, "annotations": '
                   b'[{"segment": [NaN, 2], "label": "A"}]}}}',
    "text_duration": annotations_text(video([1, 2], duration="long")),
    "label_number": annotations_text(video([1, 2], label=5)),
    "escape_label_bad_segment": annotations_text(video([1, "x"], label=ESC_TITLE)),
    "bom_then_list": BOM + b"[1, 2]",
    "deep": b'{"database": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not_utf8": b'{"database": {"caf\xe9": 1}}',
}

PREDICTIONS = {
    "csv_bom_missing_column": ("p.csv", BOM + b"video,label,start,end\r\nv,A,1,2\r\n"),
    "csv_nan_score": ("p.csv", b"video,label,start,end,score\nv,A,1,2,nan\n"),
    "csv_reversed": ("p.csv", b"video,label,start,end,score\nv,A,5,2,0.5\n"),
    "csv_escape_label_bad_start": ("p.csv", f"video,label,start,end,score\nv,{ESC_TITLE},x,2,0.5\n".encode()),
    "json_results_list": ("p.json", b'{"results": [1, 2]}'),
    "json_huge_score": ("p.json", b'{"results": {"v": [{"label": "A", "score": 1e999, "segment": [1, 2]}]}}'),
    "json_bom_garbage": ("p.json", BOM + b'{"results": '),
}

CLASS_FILES = {
    "empty": b"",
    "only_bom": BOM,
    "bom_and_comments": BOM + b"# nothing here\n\n",
    "duplicates": b"high jump\nHigh Jump\n",
    "no_words": b"_\n",
    "over_long": (" ".join(["word"] * 90) + "\n").encode(),
    "not_utf8": b"caf\xe9\n",
    "escape_only": b"\x1b\x07\n",
}


@pytest.fixture
def invoke(tiny_clip_name, tiny_clip_weights):
    """Run ``argv`` in ``root`` and check the contract: status != 0, one error line, no traceback, nothing
    changed below ``root``."""
    def run(root: Path, argv: list, clip: bool = True):
        before = snapshot(root)
        extra = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights)] if clip else []
        r = CliRunner().invoke(app, [*map(str, argv), *extra])
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.exit_code not in (0, None) and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert len(errors) == 1, r.stderr
        assert "\x1b" not in r.output, r.output
        assert snapshot(root) == before, (sorted(set(snapshot(root)) ^ set(before)), r.output)
        return errors[0]
    return run


@pytest.mark.parametrize("name", sorted(CRAFTED_CHECKPOINTS) + ["deflate_bomb"])
@pytest.mark.parametrize("command", ["detect", "train --resume"])
def test_crafted_checkpoint(invoke, tmp_path, good_checkpoint, name, command):
    bad = tmp_path / f"{name}.pt"
    if name == "deflate_bomb":
        deflate_bomb(bad)
    else:
        craft_checkpoint(good_checkpoint, bad, CRAFTED_CHECKPOINTS[name][0])
    write_features(tmp_path / "feats" / "v.npy", *features())
    if command == "detect":
        invoke(tmp_path, ["detect", tmp_path / "feats" / "v.npy", "-c", "a,b", "--checkpoint", bad, "-o",
                          tmp_path / "out.json", "--no-progress"], clip=False)
    else:
        (tmp_path / "ann.json").write_bytes(annotations_text(video([1, 2], label="HighJump")))
        invoke(tmp_path, ["train", "--features", tmp_path / "feats", "--annotations", tmp_path / "ann.json",
                          "--output", tmp_path / "w" / "m.pt", "--resume", bad, "--device", "cpu", "--no-progress"],
               clip=False)


@pytest.mark.parametrize("name", sorted(SIDECARS))
@pytest.mark.parametrize("command", ["detect", "train", "zero-shot"])
def test_crafted_sidecar(invoke, tmp_path, name, command):
    npy = SIDECARS[name](tmp_path / "feats")
    if command == "detect":
        invoke(tmp_path, ["detect", npy, "-c", "a,b", "-o", tmp_path / "new" / "out.json", "--html",
                          tmp_path / "pages" / "r.html", "--no-progress"])
    elif command == "zero-shot":
        thumos = json.loads((Path(__file__).parent / "fixtures" / "thumos14_mini.json").read_text())
        every_class = [{"segment": [0.25 * i, 0.25 * i + 0.2], "label": c} for i, c in enumerate(thumos["classes"])]
        thumos["database"] = {vid: {"subset": subset, "duration": 6.0, "annotations": every_class}
                              for vid, subset in (("v", "val"), ("t", "test"))}
        (tmp_path / "ann.json").write_text(json.dumps(thumos))
        write_features(tmp_path / "feats" / "t.npy", *features(seed=1))
        # Training reads the crafted file first (the baseline, which would finish before, is not run): the work
        # dir the run began is removed again. (A damaged test video is a warning and a miss in the protocol.)
        invoke(tmp_path, ["zero-shot", "--dataset", "thumos14", "--features", tmp_path / "feats", "-a",
                          tmp_path / "ann.json", "--work-dir", tmp_path / "work", "--splits", "0", "--epochs", "1",
                          "--no-baseline", "--device", "cpu", "--no-progress"])
    else:
        (tmp_path / "ann.json").write_bytes(annotations_text(video([1, 2]), classes=["A"]))
        invoke(tmp_path, ["train", "--features", tmp_path / "feats", "--annotations", tmp_path / "ann.json",
                          "--subset", "test", "--output", tmp_path / "w" / "m.pt", "--device", "cpu", "--no-progress"])


@pytest.mark.parametrize("name", sorted(ANNOTATIONS))
@pytest.mark.parametrize("command", ["evaluate", "train", "zero-shot"])
def test_crafted_annotations(invoke, tmp_path, name, command):
    ann = tmp_path / "ann.json"
    ann.write_bytes(ANNOTATIONS[name])
    write_features(tmp_path / "feats" / "v.npy", *features())
    if command == "evaluate":
        (tmp_path / "p.json").write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9,
                                                                         "segment": [1, 2]}]}}))
        invoke(tmp_path, ["evaluate", tmp_path / "p.json", "-a", ann, "-o", tmp_path / "new" / "scores.json"],
               clip=False)
    elif command == "train":
        invoke(tmp_path, ["train", "--features", tmp_path / "feats", "--annotations", ann, "--output",
                          tmp_path / "w" / "m.pt", "--device", "cpu", "--no-progress"])
    else:
        invoke(tmp_path, ["zero-shot", "--dataset", "thumos14", "--features", tmp_path / "feats", "-a", ann,
                          "--work-dir", tmp_path / "work", "--device", "cpu", "--no-progress"])


@pytest.mark.parametrize("name", sorted(PREDICTIONS))
def test_crafted_predictions(invoke, tmp_path, name):
    file_name, data = PREDICTIONS[name]
    (tmp_path / file_name).write_bytes(data)
    (tmp_path / "ann.json").write_bytes(annotations_text(video([1, 2])))
    invoke(tmp_path, ["evaluate", tmp_path / file_name, "-a", tmp_path / "ann.json", "-o", tmp_path / "s.json"],
           clip=False)


@pytest.mark.parametrize("name", sorted(CLASS_FILES))
@pytest.mark.parametrize("command", ["detect", "train"])
def test_crafted_classes_file(invoke, tmp_path, name, command):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(CLASS_FILES[name])
    write_features(tmp_path / "feats" / "v.npy", *features())
    if command == "detect":
        invoke(tmp_path, ["detect", tmp_path / "feats", "--classes-file", classes, "-o", f"{tmp_path / 'out'}/",
                          "--html", f"{tmp_path / 'pages'}/", "--no-progress"])
    else:
        (tmp_path / "ann.json").write_bytes(annotations_text(video([1, 2])))
        invoke(tmp_path, ["train", "--features", tmp_path / "feats", "--annotations", tmp_path / "ann.json",
                          "--classes-file", classes, "--output", tmp_path / "w" / "m.pt", "--device", "cpu",
                          "--no-progress"])


LISTS = {
    "only_missing": b"gone.npy\n",
    "self_including": b"@list.txt\n",
    "bom_escape_missing": BOM + f"gone{ESC_TITLE}.npy\n".encode(),
    "not_utf8_missing": b"gone\xff.npy\n",
}


@pytest.mark.parametrize("name", sorted(LISTS))
@pytest.mark.parametrize("command", ["detect", "extract-features"])
def test_crafted_list_file(invoke, tmp_path, name, command):
    (tmp_path / "list.txt").write_bytes(LISTS[name])
    out = ["-c", "a", "-o", f"{tmp_path / 'out'}/"] if command == "detect" else ["--output", tmp_path / "feats"]
    invoke(tmp_path, [command, f"@{tmp_path / 'list.txt'}", *out, "--no-progress"])


def _nan_clip(path: Path, tiny_clip_weights: Path) -> None:
    import torch

    state = torch.load(tiny_clip_weights, map_location="cpu", weights_only=True)
    torch.save({k: (v.clone().fill_(float("nan")) if v.is_floating_point() else v) for k, v in state.items()}, path)


def _other_dict(path: Path, tiny_clip_weights: Path) -> None:
    import torch

    torch.save({"hologram.weight": torch.zeros(3, 3)}, path)


CLIP_WEIGHTS = {
    "deflate_bomb": lambda path, _: deflate_bomb(path),
    "garbage": lambda path, _: path.write_bytes(bytes(range(256)) * 16),
    "text": lambda path, _: path.write_text("not weights\n"),
    "other_state_dict": _other_dict,
    "nan": _nan_clip,
}


@pytest.mark.parametrize("name", sorted(CLIP_WEIGHTS))
@pytest.mark.parametrize("command", ["extract-features", "detect"])
def test_crafted_clip_weights(invoke, tmp_path, videos, tiny_clip_name, tiny_clip_weights, name, command):
    weights = tmp_path / "clip.pt"
    CLIP_WEIGHTS[name](weights, tiny_clip_weights)
    video = videos["single"]["path"]
    out = ["--output", tmp_path / "feats"] if command == "extract-features" else ["-c", "a", "-o", tmp_path / "o.json"]
    invoke(tmp_path, [command, video, *out, "--clip-model", tiny_clip_name, "--clip-weights", weights,
                      "--no-progress"], clip=False)
