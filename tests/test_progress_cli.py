"""Progress bars of ``stale detect`` on one video, seen from a real terminal (a pty) and from a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import TINY_CLIP_CONFIG, TINY_CLIP_NAME

REPO = Path(__file__).resolve().parents[1]

# `python -m stale_cli` with the tests' tiny CLIP registered with open_clip first (it is not a built-in model).
RUN = """
import json, sys, open_clip
open_clip.add_model_config(sys.argv.pop(1))
sys.argv[0] = "stale"
from stale_cli.cli import main
main()
"""


def stale_argv(config: Path, *args) -> list:
    return [sys.executable, "-c", RUN, str(config), *map(str, args)]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", COLUMNS="120", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("clip_config") / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def run_on_terminal(argv: list, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pty (a terminal) and stdout on a pipe: (status, stdout, terminal bytes)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child, env=env(),
                            cwd=REPO)
    os.close(child)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([main], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for {timeout} s: {seen.decode(errors='replace')}")
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal (EIO on Linux)
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    out = proc.stdout.read().decode()
    return proc.wait(timeout), out, seen.decode(errors="replace")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    from fractions import Fraction

    from conftest import make_video

    d = tmp_path_factory.mktemp("progress_video")
    return make_video(d / "match.mp4", [Fraction(i, 25) for i in range(250)], Fraction(1, 25))  # 10 s


def detect_args(video, tiny_clip_weights):
    return ["detect", video, "--classes", "a dog,a cat", "--clip-model", TINY_CLIP_NAME, "--clip-weights",
            tiny_clip_weights, "--device", "cpu", "--batch-size", "4"]


def test_one_video_shows_a_frame_bar_on_a_terminal(config, long_video, tiny_clip_weights):
    status, out, term = run_on_terminal(stale_argv(config, *detect_args(long_video, tiny_clip_weights)))
    assert status == 0, term
    assert "match.mp4" in term and "/40" in term and "frame" in term, term  # 10 s at 4 fps: 40 frames
    assert "video 1/" not in term  # one video: no batch position
    assert "match" in out  # the table on stdout, outside the bar


def test_batch_names_the_position_and_no_progress_turns_it_off(config, long_video, videos, tiny_clip_weights):
    args = detect_args(long_video, tiny_clip_weights) + [videos["cfr25"]["path"]]
    status, _, term = run_on_terminal(stale_argv(config, *args))
    assert status == 0, term
    assert "video 1/2 match.mp4" in term and "video 2/2 cfr25.mp4" in term, term
    status, _, term = run_on_terminal(stale_argv(config, *args, "--no-progress"))
    assert status == 0 and "frame" not in term and "video 1/2" not in term, term


def test_no_bar_when_stderr_is_not_a_terminal(config, long_video, tiny_clip_weights):
    proc = subprocess.run(stale_argv(config, *detect_args(long_video, tiny_clip_weights)), capture_output=True,
                          text=True, env=env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "frame" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    assert "done" in proc.stderr  # the summary line is still there
