"""Decoding in worker processes (--workers N): same features and order as one decode thread, a bad file fails
alone, resume skips what is done, and a decoding process that dies fails only its own video."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from stale_cli.features.extract import extract_many, iter_features, processes


@pytest.fixture(scope="module")
def clip(tiny_clip_name, tiny_clip_weights):
    from stale_cli.features.clip_backbone import load_clip

    return load_clip(tiny_clip_name, str(tiny_clip_weights))


@pytest.fixture(scope="module")
def batch(videos, bad_files):
    """Good videos of different lengths around a garbage file and a truncated one."""
    return [videos["cfr25"]["path"], videos["single"]["path"], bad_files["garbage"], videos["ntsc"]["path"],
            bad_files["truncated"], videos["late"]["path"], videos["vfr"]["path"]]


def test_workers_give_the_same_results_in_input_order(clip, batch):
    one = list(iter_features(batch, clip, fps=4.0, batch_size=4, workers=1))
    many = list(iter_features(batch, clip, fps=4.0, batch_size=4, workers=3))
    assert [r.index for r in many] == list(range(len(batch)))
    assert [r.path for r in many] == [r.path for r in one]
    for a, b in zip(one, many):
        assert (a.error is None) == (b.error is None)
        if a.error is not None:
            assert str(a.error) == str(b.error) and "garbage.mp4" in str(b.error)
            continue
        np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), atol=1e-3)
        assert a.meta == b.meta and a.warnings == b.warnings
    assert any("truncated" in w for w in many[4].warnings)


def test_workers_resume_and_report_failures(clip, batch, tmp_path):
    out = tmp_path / "feats"
    errors = []
    s = extract_many(batch, out, clip, fps=4.0, batch_size=4, progress=False, workers=2, on_error=errors.append)
    assert s.done == 6 and s.skipped == 0 and [p.name for p, _ in s.failed] == ["garbage.mp4"]
    assert len(errors) == 1 and "garbage.mp4" in errors[0]
    written = sorted(p.name for p in out.glob("*.npy"))
    assert written == sorted(p.stem + ".npy" for p in batch if p.name != "garbage.mp4")
    (out / "ntsc.npy").unlink()  # a video interrupted before its files were complete is redone
    s = extract_many(batch, out, clip, fps=4.0, batch_size=4, progress=False, workers=2)
    assert s.done == 1 and s.skipped == 5 and len(s.failed) == 1 and (out / "ntsc.npy").is_file()


def test_a_dead_decoding_process_fails_only_its_video(clip, videos, monkeypatch):
    """Kill a decoding process while it works: its video fails with a clear message, a new process takes over,
    and the other videos come out complete and in order."""
    import multiprocessing

    paths = [videos["cfr25"]["path"], videos["ntsc"]["path"], videos["late"]["path"], videos["single"]["path"]]
    monkeypatch.setattr(processes, "WORKER_POLL_S", 0.2)
    killed = []

    def on_frames(n):
        # After the first encoded chunk: kill the decoding processes once (they are mid-video).
        if not killed:
            for child in multiprocessing.active_children():
                if child.name.startswith("stale-decode"):
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)

    results = list(iter_features(paths, clip, fps=4.0, batch_size=2, on_frames=on_frames, workers=2))
    assert killed
    assert [r.index for r in results] == [0, 1, 2, 3]
    failed = [r for r in results if r.error is not None]
    assert failed and all("decoding process died" in str(r.error) for r in failed)
    assert len(failed) < len(paths)  # the replacements decoded the rest
    for r in results:
        if r.error is None:
            assert r.features.shape[0] == r.meta.num_rows > 0


def test_cli_workers_end_to_end(tiny_clip_name, tiny_clip_weights, videos, bad_files, tmp_path):
    from typer.testing import CliRunner

    from stale_cli.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), str(bad_files["garbage"]),
                                 str(videos["ntsc"]["path"]), "--out", str(out), "--workers", "2",
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert sorted(p.name for p in out.glob("*.npy")) == ["cfr25.npy", "ntsc.npy"]
    assert "done 2, skipped 0 (already extracted), failed 1" in r.output
    assert [l for l in r.output.splitlines() if l.startswith("error:") and "garbage.mp4" in l]
    r = CliRunner().invoke(app, ["extract-features", str(videos["cfr25"]["path"]), "--out", str(out),
                                 "--workers", "0", "--clip-model", tiny_clip_name])
    assert r.exit_code == 1 and "error: --workers must be at least 1, got 0" in r.output


def test_workers_ask_claim_before_handing_out_a_video(clip, videos):
    """extract_many's per-video lock (claim) works with decoding processes: a refused video is not decoded and
    comes out in its place with claimed=False."""
    paths = [videos["cfr25"]["path"], videos["single"]["path"], videos["ntsc"]["path"]]
    asked = []

    def claim(i):
        asked.append(i)
        return i != 1

    results = list(iter_features(paths, clip, fps=4.0, batch_size=4, claim=claim, workers=2))
    assert sorted(asked) == [0, 1, 2]
    assert [(r.index, r.claimed) for r in results] == [(0, True), (1, False), (2, True)]
    assert results[1].features is None and results[0].features.shape[0] > 0 and results[2].features.shape[0] > 0
