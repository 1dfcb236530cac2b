"""What the commands say on stderr (stale_cli/cli/): -q (errors only), one `wrote X` per file written, usage errors
as one line, -v shown as a counter, a CLI that builds without importing torch, signals, a broken pipe and a full
stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import feature_files  # tests/ is on sys.path (rootdir conftest)
from feature_files import invoke

REPO = Path(__file__).resolve().parents[1]


def detect_args(feature_dir, tiny_clip_name, tiny_clip_weights, *extra):
    return ["detect", feature_dir / "game.npy", "--classes", "high jump,pole vault", "--clip-model", tiny_clip_name,
            "--clip-weights", tiny_clip_weights, *extra]


def test_every_written_file_is_named_once(feature_dir, tiny_clip_name, tiny_clip_weights, tmp_path):
    out, plot, html = tmp_path / "p.json", tmp_path / "p.png", tmp_path / "r.html"
    r = invoke(*detect_args(feature_dir, tiny_clip_name, tiny_clip_weights, "-o", out, "--plot", plot, "--html", html))
    assert r.exit_code == 0, r.output
    for path in (out, plot, html):
        assert path.is_file() and r.stderr.count(f"wrote {path}") == 1, r.stderr

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"game": {"subset": "test", "duration": 60.0, "annotations": [
        {"segment": [10.0, 20.0], "label": "high jump"}]}}}))
    r = invoke("evaluate", out, "-a", gt, "-o", tmp_path / "ev.json")
    assert r.exit_code == 0, r.output
    assert r.stderr.count(f"wrote {tmp_path / 'ev.json'}") == 1 and "average mAP" in r.stdout


def test_extract_features_names_its_folder_once(videos, tiny_clip_name, tiny_clip_weights, tmp_path):
    out = tmp_path / "feats"
    r = invoke("extract-features", videos["cfr25"]["path"], videos["late"]["path"], "--out", out, "--clip-model",
               tiny_clip_name, "--clip-weights", tiny_clip_weights, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("wrote ") == 1 and f"wrote 2 feature file(s) (.npy + .json) to {out}" in r.stderr
    r = invoke("extract-features", videos["cfr25"]["path"], "--out", out, "--clip-model", tiny_clip_name,
               "--clip-weights", tiny_clip_weights, "--workers", "1")
    assert r.exit_code == 0 and "wrote" not in r.stderr  # nothing new: nothing written


def test_quiet_is_errors_only_and_results_still_on_stdout(feature_dir, tiny_clip_name, tiny_clip_weights,
                                                          tmp_path):
    r = invoke("-q", *detect_args(feature_dir, tiny_clip_name, tiny_clip_weights, "-o", tmp_path / "p.json"))
    assert r.exit_code == 0 and r.stderr == "" and (tmp_path / "p.json").is_file(), r.stderr
    r = invoke("-q", *detect_args(feature_dir, tiny_clip_name, tiny_clip_weights))
    assert r.exit_code == 0 and r.stderr == "" and "high jump" in r.stdout
    r = invoke("-q", *detect_args(feature_dir, tiny_clip_name, tiny_clip_weights, "--mode", "fast"))
    assert r.exit_code == 1 and r.stderr.startswith("error:") and len(r.stderr.splitlines()) == 1


def test_unknown_option_is_one_error_line_with_status_2():
    for args in (["detect", "x.mp4", "--bogus"], ["--bogus"], ["detct"], ["detect"]):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), (args, r.stderr)
        assert "╭" not in r.output and "Traceback" not in r.output
    assert "no such option: --bogus" in invoke("detect", "x.mp4", "--bogus").stderr


def test_verbose_is_shown_as_a_counter():
    r = invoke("-h")
    line = next(ln for ln in r.stdout.splitlines() if "--verbose" in ln)
    assert "<int>" not in line and "-vv" in r.stdout


def test_the_cli_builds_without_torch():
    """`stale --version` and `stale -h` stay fast: building the app imports neither torch nor numpy."""
    code = ("import sys\nsys.argv = ['stale', '--version']\nfrom stale_cli.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'numpy', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "[]", out


def test_models_lists_tags_and_finds_cached_weights(tmp_path):
    from stale_cli.cli.models import is_cached

    r = invoke("models")
    assert r.exit_code == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[0] == "ViT-B-16")
    assert "openai" in line.split()[1:] or "openai*" in line.split()[1:]
    assert not is_cached("ViT-B-16", "openai", cache_dir=tmp_path)
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "open_clip_pytorch_model.bin").write_bytes(b"x")
    assert is_cached("ViT-B-16", "openai", cache_dir=tmp_path)


def stale_process(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored, and Python then keeps
    # it ignored: give the command the default disposition, as a terminal would.
    return subprocess.Popen([sys.executable, "-m", "stale_cli", *map(str, args)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def wait_in_pipe_read(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process sleeps in read() on a pipe.

    A signal that lands between the command's open() and its read() is seen by CPython's C handler but not acted on
    until read() returns, which on a pipe kept open never happens: the run would hang (a race: it failed CI once).
    Linux names the kernel function a process sleeps in; elsewhere, a second's wait."""
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while not wchan.read_text().endswith("pipe_read") and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("signum, status, word", [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, signum, status, word):
    fifo = tmp_path / "annotations.json"
    os.mkfifo(fifo)
    proc = stale_process("evaluate", tmp_path / "p.json", "-a", fifo, stdout=subprocess.DEVNULL)
    with open(fifo, "w"):  # returns once the command has opened the annotations
        wait_in_pipe_read(proc.pid)
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


ENTRY = "import sys; from stale_cli.cli import main; sys.exit(main())"  # what the `stale` console script runs


def test_ctrl_c_while_the_commands_are_imported_is_one_line(tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "typer"  # the first heavy import of the CLI is interrupted, as Ctrl-C in the first moments
    fake.mkdir()
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    r = subprocess.run([sys.executable, "-c", ENTRY, "detect", "x.mp4", "-c", "a"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 130 and r.stderr == "error: interrupted\n" and r.stdout == ""


@pytest.mark.parametrize("argv", [["--help"], ["detect", "--help"], ["-h"]])
def test_help_into_a_pipe_whose_reader_is_gone_exits_0(argv):
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # `stale --help | head -1`, head long gone: every write is a broken pipe
    try:
        r = subprocess.run([sys.executable, "-c", ENTRY, *argv], stdout=write, stderr=subprocess.PIPE,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    finally:
        os.close(write)
    assert r.returncode == 0 and r.stderr == b""


# ---------------------------------------------------------------- a full stdout


def stale_to_dev_full(tmp_path, *args) -> subprocess.CompletedProcess:
    """Run ``stale ARGS > /dev/full`` in a new process that knows the tiny CLIP's config."""
    from conftest import TINY_CLIP_CONFIG, TINY_CLIP_NAME

    config = tmp_path / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    code = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); from stale_cli.cli import main; "
            "sys.argv = ['stale', *sys.argv[2:]]; main()")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-c", code, str(config), *map(str, args)], cwd=REPO, env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("to", [["-o", "-"], []], ids=["dash", "table"])
def test_a_full_stdout_is_one_error_line(tmp_path, random_feats, tiny_clip_weights, to):
    done = stale_to_dev_full(tmp_path, *feature_files.detect_args(random_feats / "v0.npy", *to), "--clip-model",
                             "stale-tiny", "--clip-weights", tiny_clip_weights)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] or [done.stderr]
    assert "cannot write to stdout" in line and "No space left" in line
