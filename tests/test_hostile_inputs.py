"""Issue 17, the second reliability round, the parts that span several commands: crafted checkpoints, memory
running out, the HTML report from concurrent runs, file names that are not UTF-8 and BOMs across commands. Each bad
input is one ``error:`` line, never a traceback; a batch goes on past it. (Its other tests are in the files of the
modules they test.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.fileio import write_features

from feature_files import (  # tests/ is on sys.path (rootdir conftest)
    DIM, LATIN1, detect_args, error_lines, features,
)


# ---------------------------------------------------------------- 10: file names that are not UTF-8


def test_latin1_video_plays_from_the_report_and_extracts(run, tmp_path, videos):
    video = tmp_path / f"{LATIN1}.mp4"
    shutil.copy(videos["single"]["path"], video)
    r = run(*detect_args(video, "--html", tmp_path / "r.html", "-o", tmp_path / "o.srt",
                         "--cache-features", tmp_path / "cache"))
    assert r.exit_code == 0, r.output
    assert 'src="caf%E9.mp4"' in (tmp_path / "r.html").read_text(encoding="utf-8")  # the file's own bytes
    assert sorted(os.listdir(tmp_path / "cache")) == ["caf\\xe9.json", "caf\\xe9.npy"]
    r = run("extract-features", video, "--output", tmp_path / "ex", "--no-progress")
    assert r.exit_code == 0 and (tmp_path / "ex" / "caf\\xe9.npy").is_file()


# ---------------------------------------------------------------- 16: --html through a symlinked folder


def test_report_finds_the_video_through_a_symlinked_folder(run, tmp_path, videos):
    from stale_cli.report import relative_src

    (tmp_path / "elsewhere" / "reports").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "reports").symlink_to(tmp_path / "elsewhere" / "reports")
    video = tmp_path / "work" / "match.mp4"
    shutil.copy(videos["single"]["path"], video)
    # the browser opens work/reports/r.html and resolves ../match.mp4 without following the link
    assert relative_src(video, tmp_path / "work" / "reports") == "../match.mp4"
    cwd = os.getcwd()
    os.chdir(tmp_path / "work")
    try:
        r = run(*detect_args("match.mp4", "--html", "reports/r.html"))
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    assert 'src="../match.mp4"' in (tmp_path / "elsewhere" / "reports" / "r.html").read_text()


# ---------------------------------------------------------------- 11, 12: crafted checkpoints, --resume of another shape


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tiny_clip, tiny_clip_name) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt", tiny_clip, tiny_clip_name)


def make_checkpoint(path: Path, tiny_clip, tiny_clip_name) -> Path:
    """A small, valid checkpoint over the tiny CLIP (32-dimensional features, classes HighJump and Diving)."""
    import torch

    from stale_cli.checkpoint import save_checkpoint
    from stale_cli.data.windows import DataConfig
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.stale import STALE

    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=DIM, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4, dropout=0.0)
    save_checkpoint(path, STALE(cfg, tiny_clip).eval(), cfg, LossConfig(), DataConfig(num_snippets=16),
                    ["HighJump", "Diving"], feature_fps=4.0, clip_model=tiny_clip_name, epoch=1)
    return path


def _nan_first_weight(ck):
    key = next(k for k, v in ck["state_dict"].items() if v.is_floating_point())
    ck["state_dict"][key] = ck["state_dict"][key].clone().fill_(float("nan"))


def _config_change(section: str, **change):
    return lambda ck: ck[section].update(change)


CRAFTED_CHECKPOINTS = {
    "feature_fps_text": (lambda ck: ck.update(feature_fps="abc"), "feature_fps must be a number"),
    "feature_fps_nan": (lambda ck: ck.update(feature_fps=float("nan")), "feature_fps must be a number"),
    "class_names_int": (lambda ck: ck.update(class_names=5), "class_names must be a list of names"),
    "class_names_empty": (lambda ck: ck.update(class_names=[]), "no class names"),
    "epoch_text": (lambda ck: ck.update(epoch="x"), "epoch must be an integer"),
    "clip_model_list": (lambda ck: ck.update(clip_model=["x"]), "clip_model must be a string"),
    "num_heads_negative": (_config_change("model_config", num_heads=-2), "num_heads must be an integer in"),
    "ffn_dim_huge_float": (_config_change("model_config", ffn_dim=1e10), "ffn_dim must be an integer in"),
    "ffn_dim_huge": (_config_change("model_config", ffn_dim=10**10), "ffn_dim must be an integer in"),
    "ffn_dim_other_shape": (_config_change("model_config", ffn_dim=4096), "weights do not fit the model"),
    "num_snippets_huge": (_config_change("model_config", num_snippets=20000), "num_snippets must be an integer in"),
    "dropout_text": (_config_change("model_config", dropout="0.1"), "dropout must be a number"),
    "freeze_int": (_config_change("model_config", freeze_text_encoder=3), "must be true or false"),
    "theta_c_text": (_config_change("detect_config", theta_c="0.1"), "theta_c must be a number"),
    "thetas_empty": (_config_change("detect_config", thetas=[]), "thetas must be a list of 1 to"),
    "thetas_nan": (_config_change("detect_config", thetas=[float("nan")]), "thetas must be a number"),
    "top_k_zero": (_config_change("detect_config", top_k=0), "top_k must be an integer in"),
    "nms_sigma_inf": (_config_change("detect_config", nms_sigma=float("inf")), "nms_sigma must be a number"),
    "loss_negative": (_config_change("loss_config", weight_cls=-1.0), "weight_cls must be a number"),
    "overlap_one": (_config_change("data_config", overlap=1.0), "overlap must be a number"),
    "nan_weights": (_nan_first_weight, "NaN or infinite"),
    "history_text": (lambda ck: ck["extra"].update(history="x"), "extra history must be a list"),
    "history_record_text": (lambda ck: ck["extra"].update(history=[{"epoch": 1, "val_map50": "x"}]),
                            "extra history val_map50 must be a number"),
    "optimizer_list": (lambda ck: ck["extra"].update(optimizer=[1]), "extra optimizer must be a dict"),
    "state_dict_list": (lambda ck: ck.update(state_dict=[1, 2]), "no state dict"),
    "state_dict_junk": (lambda ck: ck["state_dict"].update(junk="x"), "the state dict must be names of tensors"),
}


def craft_checkpoint(good: Path, path: Path, change) -> Path:
    import torch

    ck = torch.load(good, map_location="cpu", weights_only=True)
    change(ck)
    torch.save(ck, path)
    return path


@pytest.mark.parametrize("name", sorted(CRAFTED_CHECKPOINTS))
def test_crafted_checkpoint_is_one_line(run, tmp_path, good_checkpoint, name):
    change, message = CRAFTED_CHECKPOINTS[name]
    bad = craft_checkpoint(good_checkpoint, tmp_path / f"{name}.pt", change)
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", "--checkpoint", bad, "-o", tmp_path / "out.json"), clip=False)
    assert r.exit_code == 1
    assert len(error_lines(r)) == 1 and message in error_lines(r)[0], r.stderr
    assert not (tmp_path / "out.json").exists()


def test_good_checkpoint_detects(run, tmp_path, good_checkpoint):
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", "--checkpoint", good_checkpoint, "-o", tmp_path / "out.json"),
            clip=False)
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- 13: memory: tiny fps, MemoryError, CPU OOM


def test_tiny_sidecar_fps_is_refused_before_resampling(run, tmp_path, good_checkpoint):
    rows = 5000  # at 0.001 fps: 5 million seconds, 20 million rows at the checkpoint's 4 fps (2.4 GiB)
    feats = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float16)
    meta = {"fps": 0.001, "timestamps": [k * 1000.0 for k in range(rows)], "duration": rows * 1000.0,
            "source": "synthetic", "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows}
    write_features(tmp_path / "slow.npy", feats, meta)
    write_features(tmp_path / "ok.npy", *features())
    r = run(*detect_args(tmp_path / "slow.npy", tmp_path / "ok.npy", "--checkpoint", good_checkpoint, "-o",
                         tmp_path / "out.json"), clip=False)
    assert r.exit_code == 1
    (line,) = [ln for ln in error_lines(r) if "slow.npy" in ln and "input(s) failed" not in ln]
    assert "would make 20000000 rows" in line and "sidecar's fps is likely wrong" in line
    assert '"ok"' in (tmp_path / "out.json").read_text()  # the batch went on


class _OutOfMemoryOnce:
    """A loaded CLIP whose image encoder runs out of the machine's memory on its first call, as a --batch-size too
    large for the RAM does (torch's CPU allocator raises a RuntimeError), then works."""

    def __init__(self, clip, error):
        self.clip, self.error = clip, error

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_images(self, images, batch_size=64):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.clip.encode_images(images, batch_size=batch_size)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
@pytest.mark.parametrize("command", ["extract-features", "extract-features --workers 2", "detect"])
def test_out_of_memory_fails_one_video_and_the_batch_goes_on(tmp_path, videos, monkeypatch, tiny_clip_name,
                                                             tiny_clip_weights, error, command):
    import stale_cli.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: _OutOfMemoryOnce(real(*a, **kw), error))
    first, second = videos["cfr25"]["path"], videos["ntsc"]["path"]
    command, *workers = command.split(" ", 1)  # decoding in a thread, or in processes
    where = ["--output", tmp_path / "o", *" ".join(workers).split()] if command == "extract-features" else \
        ["-c", "a dog", "-o", tmp_path / "o.csv"]
    r = CliRunner().invoke(app, [command, str(first), str(second), *map(str, where), "--clip-model", tiny_clip_name,
                                 "--clip-weights", str(tiny_clip_weights), "--no-progress", "--batch-size", "64"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    oom = [ln for ln in error_lines(r) if "out of memory" in ln]
    assert len(oom) == 1 and "smaller --batch-size (e.g. 32)" in oom[0]
    # the video whose frames were encoded first failed (with decoding processes, either one), the other is done
    failed, other = ("cfr25", "ntsc") if "cfr25.mp4" in oom[0] else ("ntsc", "cfr25")
    assert workers or failed == "cfr25"
    if command == "extract-features":
        assert (tmp_path / "o" / f"{other}.npy").is_file() and not (tmp_path / "o" / f"{failed}.npy").exists()
    else:
        assert "1 video(s) done" in r.stderr and (tmp_path / "o.csv").is_file()


def test_memory_error_on_one_input_of_a_batch_is_one_failure(tmp_path):
    from stale_cli.detect import detect_batch
    from stale_cli.detections import VideoDetections

    class Detector:  # stands in for stale_cli.detect.Detector: two inputs need more memory than there is
        def detect(self, path, video_id, progress=None):
            if path.name == "big.npy":
                raise MemoryError("Unable to allocate 7.63 GiB for an array with shape (4000000, 512)")
            if path.name == "long.npy":  # the model's windows, in torch's CPU allocator
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                   "memory: you tried to allocate 68719476736 bytes.")
            if path.name == "bug.npy":
                raise RuntimeError("shape mismatch")  # not memory: a bug, not to be hidden
            return VideoDetections(video_id=video_id, source=str(path), duration=1.0, segments=[])

    results, errors = [], []
    paths = [tmp_path / "big.npy", tmp_path / "long.npy", tmp_path / "small.npy"]
    failures = detect_batch(Detector(), paths, results.append, errors.append, ids=["big", "long", "small"])
    assert [f.path.name for f in failures] == ["big.npy", "long.npy"] and [v.video_id for v in results] == ["small"]
    assert "out of memory (Unable to allocate 7.63 GiB" in errors[0].message
    assert "DefaultCPUAllocator: can't allocate memory" in errors[1].message
    with pytest.raises(RuntimeError, match="shape mismatch"):
        detect_batch(Detector(), [tmp_path / "bug.npy"], results.append, errors.append, ids=["bug"])


# ---------------------------------------------------------------- 15: one report from concurrent runs, curves on a rerun


def report_videos(page: Path) -> dict:
    """video id -> its curves payload (None: drawn without score curves) of an HTML report."""
    import json
    import re

    found = {}
    for data in re.findall(r'<script type="application/json" class="video-data">(.*?)</script>', page.read_text()):
        video = json.loads(data)
        found[video["id"]] = video["curves"]
    return found


def test_a_rerun_keeps_the_score_curves_in_the_report(run, tmp_path):
    for i in range(2):
        write_features(tmp_path / "feats" / f"v{i}.npy", *features(seed=i))
    args = detect_args(tmp_path / "feats", "-o", tmp_path / "out.json", "--html", tmp_path / "rep.html")
    assert run(*args).exit_code == 0
    first = report_videos(tmp_path / "rep.html")
    r = run(*args)
    assert r.exit_code == 0 and "2 resumed" in r.stderr
    again = report_videos(tmp_path / "rep.html")
    assert sorted(again) == ["v0", "v1"] and all(again[v] is not None for v in again)
    assert again == first  # the curves as the first run drew them (one byte per probability)


def test_concurrent_runs_into_one_report_show_every_video(run, tmp_path):
    """Run A finds v1 taken by run B, detects v0, and B records v1 before A ends: A's report has both videos, as
    its detections file has (it had only A's own)."""
    import threading

    from stale_cli.locks import lock_path
    from test_resume_concurrency import hold_lock

    for i in range(2):
        write_features(tmp_path / "feats" / f"v{i}.npy", *features(seed=i))
    inputs = [tmp_path / "feats" / "v1.npy", tmp_path / "feats" / "v0.npy"]
    # what run B will record for v1: the same detection made beforehand into another output
    assert run(*detect_args(inputs[0], "-o", tmp_path / "b" / "out.json", "--html", tmp_path / "b" / "r.html"))\
        .exit_code == 0
    record = (tmp_path / "b" / ".out.json.journal").read_bytes()
    out = tmp_path / "out.json"
    holder = hold_lock(out.with_name("out.json.v1"))  # B is detecting v1

    def b_finishes_v1():  # once A has taken v0 (so it has left v1 to B), B records v1
        while not lock_path(out.with_name("out.json.v0")).exists():
            threading.Event().wait(0.002)
        with open(tmp_path / ".out.json.journal", "ab") as f:
            f.write(record)

    b = threading.Thread(target=b_finishes_v1, daemon=True)
    b.start()
    try:
        r = run(*detect_args(*inputs, "-o", out, "--html", tmp_path / "rep.html"))
    finally:
        holder.kill()
        holder.wait()
    b.join(timeout=10)
    import json

    assert r.exit_code == 0 and "left to another run" in r.stderr
    assert sorted(json.loads(out.read_text())["results"]) == ["v0", "v1"]
    shown = report_videos(tmp_path / "rep.html")
    assert sorted(shown) == ["v0", "v1"] and shown["v1"] is not None


# ---------------------------------------------------------------- 21: zero-shot --splits of a huge range


# ---------------------------------------------------------------- 22: negative segments, sidecar timestamps


def test_a_segment_before_the_video_starts_is_refused(run, tmp_path):
    import json

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10, "annotations": [
        {"segment": [1, 2], "label": "A"}, {"segment": [-5, -2], "label": "A"}]}}}))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9, "segment": [1, 2]}]}}))
    r = run("evaluate", preds, "-a", ann, clip=False)
    assert r.exit_code == 1 and len(error_lines(r)) == 1, r.output
    assert "annotation 1: segment [-5.0, -2.0] ends before the video starts" in error_lines(r)[0]


# ---------------------------------------------------------------- 23: a UTF-8 BOM, as spreadsheet programs write it


def test_a_bom_in_a_prediction_csv_classes_file_and_annotations_is_dropped(run, tmp_path):
    import json

    ann = tmp_path / "ann.json"
    ann.write_bytes(b"\xef\xbb\xbf" + json.dumps({"database": {"v": {"subset": "test", "duration": 10,
                                                  "annotations": [{"segment": [1, 2], "label": "A"}]}}}).encode())
    preds = tmp_path / "p.csv"
    preds.write_bytes(b"\xef\xbb\xbfvideo,label,start,end,score\r\nv,A,1,2,0.9\r\n")
    r = run("evaluate", preds, "-a", ann, "--tiou", "0.5", clip=False)
    assert r.exit_code == 0, r.output
    assert "100.00" in r.stdout
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbfhigh jump\r\npole vault\r\n")
    write_features(tmp_path / "v.npy", *features())
    r = run("detect", tmp_path / "v.npy", "--classes-file", classes, "-o", tmp_path / "out.json", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out.json").read_text())["external_data"]["classes"] == ["high jump", "pole vault"]


# ---------------------------------------------------------------- training out of memory, report curves, non-finite features


def test_a_video_recorded_without_curves_is_redone_by_a_report_run_but_shown_when_another_run_did_it(tmp_path):
    from stale_cli.detections import Segment, VideoDetections
    from stale_cli.resume import DetectJournal

    source = tmp_path / "v.npy"
    source.write_bytes(b"x")
    video = VideoDetections("v", str(source), 6.0, [Segment("a", 1.0, 2.0, 0.5, 0)],
                            times=np.arange(24) / 4, scores=np.full((24, 1), 0.5), classes=("a",))
    plain = DetectJournal(tmp_path / ".j", {"classes": ["a"]}, target=lambda v: tmp_path / v)
    plain.append(video, source)  # a run without --html: no curves recorded
    report_run = DetectJournal(tmp_path / ".j", {"classes": ["a"]}, target=lambda v: tmp_path / v)
    report_run.curves = True
    assert report_run.finished("v", source) is None  # resuming it would draw no curves: detected again
    shown = report_run.finished("v", source, resuming=False)  # finished by another run: in the report as it is
    assert shown is not None and shown.scores is None and shown.segments == video.segments
    report_run.append(video, source)
    again = report_run.finished("v", source)
    assert again is not None and np.allclose(again.scores, 0.5, atol=1 / 255) and np.allclose(again.times, video.times)


def test_nonfinite_tensor_finds_nan_and_inf_also_in_half_precision():
    import torch

    from stale_cli.checkpoint import nonfinite_tensor

    state = {"a": torch.ones(1000, 1000, dtype=torch.float16), "b": torch.arange(5), "c": torch.zeros(3)}
    assert nonfinite_tensor(state) is None  # a float16 sum of 10^6 ones overflows float16, not float32
    state["c"][1] = float("inf")
    assert nonfinite_tensor(state) == "c"
    state["a"][3, 3] = float("nan")
    assert nonfinite_tensor(state) == "a"


class _NaNClip(_OutOfMemoryOnce):
    """A loaded CLIP whose image encoder gives NaN (fp16 overflow, a broken GPU kernel)."""

    def encode_images(self, images, batch_size=64):
        return self.clip.encode_images(images, batch_size=batch_size) * float("nan")


def test_nan_features_are_not_written(tmp_path, videos, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: _NaNClip(real(*a, **kw), None))
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--output", str(tmp_path / "o"),
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 1 and len(error_lines(r)) == 1, r.output
    assert "CLIP gave NaN or infinite features for 1 of 1 frames" in error_lines(r)[0]
    assert not (tmp_path / "o").exists()
