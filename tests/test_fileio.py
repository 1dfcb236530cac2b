"""Feature files read back (stale_cli/fileio.py): arrays whose header, values or sidecar cannot be trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stale_cli.errors import DataError, InputError
from stale_cli.fileio import read_features, write_features

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
    from stale_cli.checkpoint import archive_problem

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
