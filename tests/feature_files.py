"""Feature files made by hand for tests (no checks, unlike write_features), and a look at a run's error lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stale_cli.cli import app


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


def detect(*args, clip_name, clip_weights):
    return CliRunner().invoke(app, ["detect", *map(str, args), "--clip-model", clip_name, "--clip-weights",
                                    str(clip_weights), "--no-progress"])


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
