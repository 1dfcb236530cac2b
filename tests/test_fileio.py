"""Reading and writing files (stale_cli/fileio.py): feature files whose header, values or sidecar cannot be trusted;
atomic writes (the mode open would give, fsync before the rename, stale temporaries cleaned, symlinks followed,
FIFOs written into, sockets and folders refused); a full disk leaves nothing behind."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from stale_cli.errors import DataError, InputError
from stale_cli.fileio import write_text_atomic
from stale_cli.sidecar import read_features, write_features

from faults import enospc, fail_once  # tests/ is on sys.path (rootdir conftest)
from feature_files import (
    DIM, deflate_bomb, detect_args, error_lines, features, good_features, huge_header, sidecar, write_pair,
)


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


def test_a_deflate_bomb_is_refused_before_it_is_expanded(run, tmp_path):
    from stale_cli.torchfile import archive_problem

    bomb = deflate_bomb(tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 1 << 20 and "expands to 0.2 GiB" in archive_problem(bomb)
    write_features(tmp_path / "v.npy", *features())
    r = run(*detect_args(tmp_path / "v.npy", "--checkpoint", bomb), clip=False)
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "expands to 0.2 GiB" in error_lines(r)[0], r.output
    r = run("extract-features", tmp_path / "v.npy", "--output", tmp_path / "o", "--clip-weights", bomb, clip=False)
    assert r.exit_code == 1 and len(error_lines(r)) == 1 and "--clip-weights" in error_lines(r)[0], r.output
    assert "expands to" in error_lines(r)[0]


# ---------------------------------------------------------------- a full disk


def test_write_features_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "save", enospc)
    with pytest.raises(InputError, match="No space left on device; free some space"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    monkeypatch.undo()
    fail_once(monkeypatch, Path, "write_text")  # the array is written, then its sidecar fails
    with pytest.raises(InputError, match="No space left"):
        write_features(tmp_path / "a.npy", good_features(), sidecar(40))
    assert list(tmp_path.iterdir()) == []  # no array without its sidecar, no temporary file


# ---------------------------------------------------------------- what is at the path: symlink, FIFO, socket, folder


def test_a_symlink_is_followed_not_replaced(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "sub" / "made.json")
    write_text_atomic(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.json").read_text() == "x"


def test_a_fifo_is_written_into(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]  # no temporary left beside it


def test_a_socket_or_directory_is_refused(tmp_path):
    sock_path = tmp_path / "s.json"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(sock_path))
        with pytest.raises(InputError, match="it is a socket"):
            write_text_atomic(sock_path, "x")
    finally:
        server.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    (tmp_path / "d.json").mkdir()
    with pytest.raises(InputError, match="it is a directory"):
        write_text_atomic(tmp_path / "d.json", "x")


# ---------------------------------------------------------------- atomic writes: file modes, fsync, stale temporaries


def test_atomic_writes_take_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    (tmp_path / "kept.json").write_text("old")
    os.chmod(tmp_path / "kept.json", 0o604)
    write_text_atomic(tmp_path / "kept.json", "new")
    assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o604  # an existing file keeps its mode


def test_atomic_writes_fsync_before_rename_and_clean_stale_temporaries(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    stale = tmp_path / f".out.json.{dead.pid}@{host}.abc123.tmp"  # left by a killed run
    live = tmp_path / f".out.json.{os.getpid()}@{host}.def456.tmp"  # a write in progress (this process)
    other = tmp_path / f".other.json.{dead.pid}@{host}.x.tmp"  # another output's: not ours to touch
    remote = tmp_path / f".out.json.{dead.pid}@another-node.x1.tmp"  # a pid of another machine: cannot tell
    for p in (stale, live, other, remote):
        p.write_text("partial")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text_atomic(tmp_path / "out.json", "{}")
    assert events == ["fsync", "replace"]
    assert not stale.exists() and live.exists() and other.exists() and remote.exists()


def test_read_features_rejects_a_sidecar_of_another_array(tmp_path):
    from stale_cli.sidecar import write_features

    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(8)], "duration": 2.0, "source": "x", "clip_model": "m",
            "clip_weights": "w", "num_frames": 8, "num_rows": 8, "embed_dim": 16}
    write_features(tmp_path / "a.npy", np.zeros((8, 16)), meta)
    write_features(tmp_path / "b.npy", np.zeros((8, 32)), meta)  # another run's array beside this sidecar
    assert read_features(tmp_path / "a.npy")[0].shape == (8, 16)
    with pytest.raises(DataError, match="does not describe b.npy .*embed_dim 16"):
        read_features(tmp_path / "b.npy")
    np.save(tmp_path / "a.npy", np.zeros((6, 16), np.float16))
    with pytest.raises(DataError, match="num_rows 8"):
        read_features(tmp_path / "a.npy")
