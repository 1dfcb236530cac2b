"""Per-output locks (stale_cli/locks.py): a lock held by another live process, a stale one taken over, concurrent
runs splitting the work, and a lock file that cannot be made."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app

from faults import enospc  # tests/ is on sys.path (rootdir conftest)
from feature_files import error_lines


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
