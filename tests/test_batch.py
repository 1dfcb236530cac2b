"""The detect batch runner (stale_cli/cli/batch.py): outputs refused before any model loads (as a library and from
``stale detect``), each video written as it finishes, a failed input reported while the batch goes on, a rerun
resumed, renamed video ids announced."""

from __future__ import annotations

import json
import shutil

import pytest

from stale_cli.cli.batch import BatchOutputs, DetectBatch
from stale_cli.detection.detect import DetectSettings
from stale_cli.errors import InputError
from stale_cli.sidecar import write_features

from feature_files import detect_args, detect_known, features  # tests/ is on sys.path (rootdir conftest)


def settings(tiny_clip_name, tiny_clip_weights) -> DetectSettings:
    return DetectSettings(classes=["high jump", "pole vault"], mode="clip", clip_model=tiny_clip_name,
                          clip_weights=str(tiny_clip_weights), precision="fp32")


def test_an_output_over_an_input_is_refused_before_loading(feature_dir, tiny_clip_name, tiny_clip_weights):
    game = feature_dir / "game.npy"
    with pytest.raises(InputError, match="--output"):
        DetectBatch(settings(tiny_clip_name, tiny_clip_weights), [game],
                    BatchOutputs(output=feature_dir / "game.json"))


def test_a_batch_writes_reports_failures_and_resumes(feature_dir, tiny_clip_name, tiny_clip_weights,
                                                      tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for ext in (".npy", ".json"):
        shutil.copy(feature_dir / f"game{ext}", inputs / f"game{ext}")
    (inputs / "bad.npy").write_bytes(b"not an array")
    (inputs / "bad.json").write_text('{"fps": 2.0}')
    paths = [inputs / "game.npy", inputs / "bad.npy"]
    out = BatchOutputs(output=tmp_path / "out/", fmt="json")
    events, errors = [], []

    batch = DetectBatch(settings(tiny_clip_name, tiny_clip_weights), paths, out)
    assert batch.detector is None  # planned and checked, nothing loaded
    assert batch.load("cpu").mode == "clip"
    result = batch.run(on_start=lambda path, vid: events.append(("start", vid)), on_done=lambda: events.append("done"),
                       on_error=errors.append, on_end=lambda: events.append("end"))
    assert (result.mode, result.done, result.resumed, [f.path for f in result.failures]) == ("clip", 1, 0, paths[1:])
    assert result.written == [tmp_path / "out" / "game.json"] and "corrupt feature file" in errors[0].message
    assert events == [("start", "game"), "done", ("start", "bad"), "done", "end"]
    assert json.loads((tmp_path / "out" / "game.json").read_text())["results"]["game"]

    again = DetectBatch(settings(tiny_clip_name, tiny_clip_weights), paths, out)
    again.load("cpu")
    result = again.run()
    assert (result.done, result.resumed, len(result.failures)) == (0, 1, 1)  # game from the journal, bad again


def test_renamed_ids_are_announced(run, tmp_path):
    for d in ("x", "y"):
        write_features(tmp_path / d / "same.npy", *features())
    r = run(*detect_args(tmp_path / "x" / "same.npy", tmp_path / "y" / "same.npy", "-o", tmp_path / "p.json"))
    assert r.exit_code == 0
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and all("same-" in w for w in warnings)


def test_detect_checks_the_output_before_any_work(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.detection.detect as detect_module

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(detect_module.Detector, "__init__", never)
    (tmp_path / "file").write_text("")
    r = detect_known([feats, "-o", tmp_path / "file" / "preds.json"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 1 and "cannot write" in r.output
