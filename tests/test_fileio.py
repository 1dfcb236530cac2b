"""Feature files read back (stale_cli/fileio.py): arrays whose header, values or sidecar cannot be trusted."""

from __future__ import annotations

import numpy as np
import pytest

from stale_cli.errors import DataError
from stale_cli.fileio import read_features

from feature_files import DIM, good_features, huge_header, sidecar, write_pair  # tests/ is on sys.path


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
