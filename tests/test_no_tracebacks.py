"""Issue 9, "no tracebacks, no silent nonsense": malformed sidecars and arrays, a full disk, unbounded options,
rich markup in user text, signals and broken pipes, decord's C++ log, train --out and CUDA out-of-memory, and
class names with no words. Each bad input gives one ``error:`` line and the batch goes on."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import DataError, InputError
from stale_cli.fileio import read_features, write_features

REPO = Path(__file__).resolve().parent.parent
DIM = 32  # the tiny CLIP's embedding width


def sidecar(rows: int, **changes) -> dict:
    meta = {"fps": 2.0, "timestamps": [k / 2 for k in range(rows)], "duration": rows / 2, "source": "x.mp4",
            "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows, "num_rows": rows}
    meta.update(changes)
    return meta


def write_pair(path: Path, feats: np.ndarray, meta: dict) -> Path:
    """A feature file and its sidecar as given (no checks, unlike write_features)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def good_features(rows: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float16)


def huge_header(path: Path) -> Path:
    """A .npy whose header claims a (10^12, 512) float16 array over a few bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (10**12, 512)})
        f.write(b"\0" * 64)
    path.with_suffix(".json").write_text(json.dumps(sidecar(40)))
    return path


BAD_SIDECARS = {
    "duration_text": dict(duration="abc"),
    "duration_list": dict(duration=[1]),
    "fps_text_inf": dict(fps="inf"),
    "fps_huge": dict(fps=1e300),
    "fps_zero": dict(fps=0),
    "fps_tiny": dict(fps=1e-300),
    "clip_model_number": dict(clip_model=5),
    "num_rows_wrong": dict(num_rows=39),
    "timestamps_short": dict(timestamps=[0.0, 0.5]),
    "timestamps_nan": dict(timestamps=[float("nan")] * 40),
}


@pytest.mark.parametrize("name", sorted(BAD_SIDECARS))
def test_malformed_sidecar_is_one_data_error(tmp_path, name):
    path = write_pair(tmp_path / f"{name}.npy", good_features(), sidecar(40, **BAD_SIDECARS[name]))
    # Wrong types and values are a "bad sidecar"; a sidecar that describes another array is refused as a mismatched
    # pair (issue 9 item 17).
    with pytest.raises(DataError, match="does not describe" if name in ("num_rows_wrong", "timestamps_short")
                       else "bad sidecar"):
        read_features(path)


def test_array_checks_huge_header_overflow_and_deep_json(tmp_path):
    with pytest.raises(DataError, match=r"header claims a 1000000000000 x 512 float16 array"):
        read_features(huge_header(tmp_path / "huge.npy"))  # refused from the header: nothing allocated
    big = np.full((40, DIM), 1e300)  # float64: finite on disk, inf as float32
    with pytest.raises(DataError, match="NaN or infinite"):
        read_features(write_pair(tmp_path / "big.npy", big, sidecar(40)))
    cut = write_pair(tmp_path / "cut.npy", good_features(), sidecar(40))
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_features(cut)
    deep = write_pair(tmp_path / "deep.npy", good_features(), sidecar(40))
    deep.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        read_features(deep)
    feats, meta = read_features(write_pair(tmp_path / "ok.npy", good_features(), sidecar(40)))
    assert feats.shape == (40, DIM) and feats.dtype == np.float32


# ---------------------------------------------------------------- the CLI over a batch of bad files


def detect(*args, clip_name, clip_weights):
    return CliRunner().invoke(app, ["detect", *map(str, args), "--clip-model", clip_name, "--clip-weights",
                                    str(clip_weights), "--no-progress"])


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


def test_detect_batch_reports_each_bad_feature_file_once_and_goes_on(tmp_path, tiny_clip_name, tiny_clip_weights):
    d = tmp_path / "feats"
    bad = [write_pair(d / f"{name}.npy", good_features(), sidecar(40, **change))
           for name, change in BAD_SIDECARS.items()]
    bad.append(huge_header(d / "huge.npy"))
    bad.append(write_pair(d / "big.npy", np.full((40, DIM), 1e300), sidecar(40)))
    write_pair(d / "good.npy", good_features(), sidecar(40))
    r = detect(d, "-c", "high jump,pole vault", "-o", tmp_path / "out", clip_name=tiny_clip_name,
               clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = error_lines(r)
    for path in bad:
        # One error line names it (the summary's list of failed inputs is not on error: lines).
        assert sum(str(path) in e or str(path.with_suffix(".json")) in e for e in errors) == 1, (path.name, errors)
    assert (tmp_path / "out" / "good.json").is_file()
    assert f"{len(bad)} input(s) failed" in r.stderr


def test_a_damaged_cache_entry_is_extracted_again(videos, tmp_path, tiny_clip_name, tiny_clip_weights):
    cache = tmp_path / "cache"
    write_pair(cache / "cfr25.npy", good_features(), sidecar(40, fps="inf"))
    r = detect(videos["cfr25"]["path"], "-c", "a dog", "--cache-features", cache, "-o", tmp_path / "p.json",
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 0 and "extracting again" in " ".join(r.stderr.split()), r.output
    feats, meta = read_features(cache / "cfr25.npy")
    assert meta.fps == 4.0 and feats.shape == (16, DIM)


# ---------------------------------------------------------------- a full disk


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_once(monkeypatch, owner, name: str):
    """Make ``owner.name`` raise ENOSPC on its first call only (the disk fills up, then space is freed)."""
    real = getattr(owner, name)
    calls = []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            enospc()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)


def no_partial_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_write_features_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", enospc)
    with pytest.raises(InputError, match="No space left on device; free some space"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    monkeypatch.undo()
    fail_once(monkeypatch, Path, "write_text")  # the array is written, then its sidecar fails
    with pytest.raises(InputError, match="No space left"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    assert list(tmp_path.iterdir()) == []  # no array without its sidecar, no temporary file


def test_extract_and_detect_on_a_full_disk(videos, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    import stale_cli.fileio as fileio

    out = tmp_path / "feats"
    fail_once(monkeypatch, np, "save")
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [e for e in error_lines(r) if "No space" in e]
    assert "cfr25.npy" in line
    assert sorted(p.name for p in out.iterdir()) == ["ntsc.json", "ntsc.npy"] and no_partial_files(out) == []
    monkeypatch.undo()

    fail_once(monkeypatch, fileio.os, "replace")  # the first output file cannot be put in place
    preds = tmp_path / "preds"
    write_pair(tmp_path / "in" / "other.npy", good_features(seed=1), sidecar(40))
    r = detect(out / "ntsc.npy", tmp_path / "in" / "other.npy", "-c", "a dog", "-o", preds,
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [e for e in error_lines(r) if "No space" in e]
    assert "ntsc.json" in line
    assert sorted(p.name for p in preds.iterdir() if not p.name.startswith(".")) == ["other.json"]  # not the journal


@pytest.mark.parametrize("workers", ["1", "2"])  # the decode thread, or decoding processes
def test_lock_files_on_a_full_disk(videos, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights, workers):
    """A per-video lock file that cannot be written fails that video with one line (it once hung the batch: the
    decode thread died taking the lock)."""
    import stale_cli.locks as locks

    monkeypatch.setattr(locks.os, "pwrite", enospc)
    out = tmp_path / "feats"
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress", "--workers", workers])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [e for e in error_lines(r) if "No space left on device" in e]
    assert len(lines) == 2 and all(".lock" in e for e in lines), r.stderr
    assert not out.exists()  # made for the lock files only, and left empty: removed again


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 256 KiB tmpfs filled to the last byte (needs root and mount; skipped elsewhere)."""
    import shutil

    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a tmpfs needs root and mount(8); the mocked ENOSPC tests cover the same paths")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_really_full_disk(full_tmpfs, videos, tiny_clip_name, tiny_clip_weights):
    out = full_tmpfs / "feats"
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"]),
                                 "--out", str(out), "--clip-model", tiny_clip_name, "--clip-weights",
                                 str(tiny_clip_weights), "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len([e for e in error_lines(r) if "No space left on device" in e]) == 2, r.stderr
    assert not out.exists() or list(out.iterdir()) == []  # nothing partial, no temporary file


# ---------------------------------------------------------------- numeric options


@pytest.mark.parametrize("args", [
    ["--fps", "inf"], ["--fps", "nan"], ["--fps", "1e9"], ["--fps", "0"], ["--fps", "1e-300"], ["--batch-size", "0"],
    ["--top-k", "0"], ["--top-k", "100000000000000000000"], ["--min-score", "nan"], ["--min-score", "inf"],
])
def test_detect_numeric_options_are_bounded(args, tmp_path):
    f = write_pair(tmp_path / "v.npy", good_features(), sidecar(40))
    r = CliRunner().invoke(app, ["detect", str(f), "-c", "a dog", *args])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, r.output


@pytest.mark.parametrize("args", [
    ["--fps", "inf"], ["--fps", "-1"], ["--batch-size", "0"], ["--batch-size", "10000000"],
])
def test_extract_numeric_options_are_bounded(args, tmp_path):
    r = CliRunner().invoke(app, ["extract-features", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, r.output


def test_training_and_evaluation_options_are_bounded(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10,
                                                  "annotations": [{"segment": [1, 2], "label": "A"}]}}}))
    for args in (["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--seed", "-1"], ["--epochs", "0"],
                 ["--val-fraction", "nan"], ["--lr-prompt", "2"], ["--lr-text", "nan"], ["--window-jitter", "1.5"],
                 ["--dropout", "1"], ["--dropout", "nan"]):
        r = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--annotations", str(ann), "--out",
                                     str(tmp_path / "m.pt"), *args])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, (args, r.output)
    r = CliRunner().invoke(app, ["zero-shot", "--dataset", "thumos14", "--features", str(tmp_path), "-a", str(ann),
                                 "--work-dir", str(tmp_path / "w"), "--num-snippets", "1"])
    assert r.exit_code == 1 and "--num-snippets" in r.stderr
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9, "segment": [1, 2]}]}}))
    for tiou, why in (("0.5:inf:0.05", "start:stop:step"), ("0.5:0.95:0.000005", "90001 thresholds"),
                      ("0.5:0.95:1e-320", "thresholds"), ("nan", "(0, 1]")):
        r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann), "--tiou", tiou])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and why in r.stderr, (tiou, r.output)
    deep = tmp_path / "deep.json"
    deep.write_text('{"database": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in ([str(preds), "-a", str(deep)], [str(deep), "-a", str(ann)]):
        r = CliRunner().invoke(app, ["evaluate", *args])
        assert r.exit_code == 1 and "nested too deeply" in r.stderr and "Traceback" not in r.output


def test_class_name_without_words_is_refused(tmp_path):
    f = write_pair(tmp_path / "v.npy", good_features(), sidecar(40))
    for classes in ("_", "high jump,--", "a, _ "):
        r = CliRunner().invoke(app, ["detect", str(f), "--classes", classes])
        assert r.exit_code == 1 and "has no words" in r.stderr, (classes, r.output)


# ---------------------------------------------------------------- user text is never markup


def test_file_class_and_label_text_is_printed_as_is(tmp_path, tiny_clip_name, tiny_clip_weights):
    f = write_pair(tmp_path / "race [final].npy", good_features(), sidecar(40))
    r = detect(f, "-c", "ride [/bike],[bold]swim", "--min-score", "0", "--top-k", "3",
               clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert "race [final]" in r.stdout and "[bold]swim" in r.stdout
    # The same table on a terminal (rich rendering), with the label that crashed rich's markup parser.
    from rich.console import Console

    from stale_cli.cli.table import print_table
    from stale_cli.detections import Segment, VideoDetections

    console = Console(force_terminal=True, width=120, record=True)
    print_table(VideoDetections("race [final]", "x", 20.0, [Segment("ride [/bike]", 1.0, 2.0, 0.5, 0)],
                                classes=("ride [/bike]",)), console)
    text = console.export_text()
    assert "race [final]" in text and "ride [/bike]" in text and "┃" in text
    missing = tmp_path / "[/x].npy"
    r = detect(missing, f, "-c", "[red]a", clip_name=tiny_clip_name, clip_weights=tiny_clip_weights)
    assert r.exit_code == 1 and "Traceback" not in r.output and "MarkupError" not in r.output
    assert any("[/x].npy" in e for e in error_lines(r)), r.stderr


def test_plot_help_shows_the_extra():
    r = CliRunner().invoke(app, ["detect", "--help"], env={"COLUMNS": "300"})
    assert "stale-cli[plot]" in r.stdout


# ---------------------------------------------------------------- signals and pipes (real processes)


def stale_process(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and Python then keeps
    # it ignored: give the command the default disposition, as a terminal would.
    return subprocess.Popen([sys.executable, "-m", "stale_cli", *map(str, args)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


@pytest.mark.parametrize("signum, status, word", [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, signum, status, word):
    fifo = tmp_path / "annotations.json"
    os.mkfifo(fifo)
    proc = stale_process("evaluate", tmp_path / "p.json", "-a", fifo, stdout=subprocess.DEVNULL)
    with open(fifo, "w"):  # returns once the command is blocked reading the annotations
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert f"error: {word}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_broken_pipe_ends_quietly(tmp_path):
    classes = [f"class{i:05d}" for i in range(3000)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10, "annotations": [
        {"segment": [1, 2], "label": c} for c in classes]}}}))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": c, "score": 0.5, "segment": [1, 2]} for c in classes]}}))
    proc = stale_process("evaluate", preds, "-a", ann, stdout=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141 and err == "", (proc.returncode, err)


def test_decord_log_lines_do_not_reach_stderr(bad_files, capfd):
    pytest.importorskip("decord")
    from stale_cli.errors import DecodeError
    from stale_cli.video import FrameSampler

    for name in ("garbage", "text"):  # "ERROR opening", "Failed to seek file to position: 0"
        for decoder in ("decord", "auto"):
            with pytest.raises(DecodeError):
                list(FrameSampler(bad_files[name], 4.0, decoder=decoder))
    assert sum(len(c.indices) for c in FrameSampler(bad_files["truncated"], 4.0, decoder="decord")) > 0
    err = capfd.readouterr().err
    assert ".cc:" not in err and "ERROR opening" not in err and "Failed to seek" not in err, err


# ---------------------------------------------------------------- train --out, CUDA out of memory


def test_train_out_that_is_a_directory_is_refused_before_training(tmp_path):
    from test_train import make_dataset  # tests/ is on sys.path (rootdir conftest)

    feats, ann = make_dataset(tmp_path, "stale-tiny")
    (tmp_path / "w").mkdir()
    r = CliRunner().invoke(app, ["train", "--features", str(feats), "--annotations", str(ann), "--out",
                                 str(tmp_path / "w"), "--no-progress"])
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "is a directory" in r.stderr, r.output


def test_full_disk_while_saving_a_checkpoint_keeps_the_last_good_one(tmp_path, tiny_clip_name, tiny_clip_weights,
                                                                     monkeypatch):
    from stale_cli.checkpoint import read_checkpoint
    from test_train import cli_args, make_dataset

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


def _classes(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("HighJump\nDiving\n")
    return path


class OutOfMemoryClip:
    """A loaded CLIP whose image encoder runs out of CUDA memory, as a too large --batch-size does on a GPU."""

    def __init__(self, clip):
        self.clip = clip

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_images(self, images, batch_size=64):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_in_extraction_is_one_line(videos, tmp_path, monkeypatch, tiny_clip_name,
                                                       tiny_clip_weights):
    import stale_cli.clip_backbone as backbone

    real = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **kw: OutOfMemoryClip(real(*a, **kw)))
    paths = [str(videos["cfr25"]["path"]), str(videos["ntsc"]["path"])]
    common = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress",
              "--batch-size", "64"]
    for argv in (["extract-features", *paths, "--out", str(tmp_path / "o")], ["detect", *paths, "-c", "a dog"]):
        r = CliRunner().invoke(app, [*argv, *common])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        (line,) = error_lines(r)
        assert "CUDA out of memory" in line and "smaller --batch-size (e.g. 32)" in line


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 1e300])
def test_checkpoint_with_an_unusable_feature_rate_is_refused(tmp_path, tiny_clip, tiny_clip_name, fps):
    from stale_cli.checkpoint import save_checkpoint
    from stale_cli.data.windows import DataConfig
    from stale_cli.detect import DetectSettings, Detector
    from stale_cli.errors import CheckpointError
    from stale_cli.model.config import LossConfig
    from test_small_correctness import _tiny_model

    model, cfg = _tiny_model(tiny_clip, tiny_clip_name)
    save_checkpoint(tmp_path / "m.pt", model, cfg, LossConfig(), DataConfig(num_snippets=16), ["A"], feature_fps=fps,
                    clip_model=tiny_clip_name)
    with pytest.raises(CheckpointError, match="feature_fps must be a number in"):
        Detector(DetectSettings(classes=["a dog"], mode="stale", checkpoint=tmp_path / "m.pt"))
