"""The text-feature cache (stale_cli/textcache.py): each class name encoded once per encoder; a damaged cache only
costs time."""

from __future__ import annotations

import numpy as np


def test_text_cache_encodes_each_name_once(tmp_path, monkeypatch):
    from stale_cli.textcache import cached_rows

    monkeypatch.setenv("STALE_CACHE_DIR", str(tmp_path))
    calls = []

    def encode(names):
        calls.append(list(names))
        return np.stack([np.full(3, len(n), np.float32) for n in names])

    first = cached_rows({"clip": "a"}, ["ab", "abc"], encode)
    again = cached_rows({"clip": "a"}, ["abc", "d", "ab"], encode)
    assert calls == [["ab", "abc"], ["d"]]  # only the new name is encoded the second time
    np.testing.assert_array_equal(again, [[3, 3, 3], [1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(first, [[2, 2, 2], [3, 3, 3]])
    cached_rows({"clip": "b"}, ["ab"], encode)  # another encoder: its own entry
    assert calls[-1] == ["ab"]
    (tmp_path / "junk").write_text("x")
    for f in tmp_path.glob("text-*.npz"):
        f.write_bytes(b"not an npz")  # a damaged cache only costs time
    np.testing.assert_array_equal(cached_rows({"clip": "a"}, ["ab"], encode), [[2, 2, 2]])
