"""Feature files and sidecars made by hand for tests (no checks, unlike write_features), features whose answer is
known, and helpers that run a command through CliRunner and look at its error lines."""

from __future__ import annotations

import json
import os
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


def meta_for(num_rows: int, fps: float, origin: float = 0.0) -> dict:
    return {
        "fps": fps, "timestamps": [origin + k / fps for k in range(num_rows)], "duration": origin + num_rows / fps,
        "source": "synthetic.mp4", "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": num_rows,
    }


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


def invoke(*args):
    """``stale ARGS`` through CliRunner."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_detect(args, tiny_clip_name, tiny_clip_weights):
    """``stale detect ARGS`` (strings) with the tiny CLIP through CliRunner."""
    base = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress"]
    return CliRunner().invoke(app, ["detect", *args, *base])


def detect(*args, clip_name, clip_weights):
    return CliRunner().invoke(app, ["detect", *map(str, args), "--clip-model", clip_name, "--clip-weights",
                                    str(clip_weights), "--no-progress"])


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


LATIN1 = os.fsdecode(b"caf\xe9")  # a Latin-1 file name: not UTF-8, so Python holds it with a surrogate escape


ESC_TITLE = "\x1b]0;owned\x07"  # retitles a terminal that prints it raw


def features(rows: int = 24, seed: int = 0) -> tuple[np.ndarray, dict]:
    feats = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    meta = {"fps": 4.0, "timestamps": [k / 4 for k in range(rows)], "duration": rows / 4, "source": "synthetic",
            "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": rows}
    return feats, meta


def detect_args(*args, classes="high jump,pole vault"):
    return ("detect", *args, "-c", classes, "--no-progress")


def deflate_bomb(path: Path) -> Path:
    """A zip of 160 MB of deflated zeros in about 160 kB: torch.load would allocate all of it."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(160):
                member.write(block)
    return path


# Features whose answer is known: two classes at TRUTH seconds of a 60 s video at 2 fps (detection tests).

CLASSES = ["high jump", "pole vault"]
FPS = 2.0
DURATION = 60.0
TRUTH = {"high jump": (10.0, 20.0), "pole vault": (30.0, 35.0)}


def constructed_features(text: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Features shaped like real CLIP ones: a common scene direction ``u`` (orthogonal to every class text) in
    every snippet, plus 0.4 x class k's ensembled text embedding inside its TRUTH seconds (cosine ~0.37 there,
    ~0 elsewhere), plus per-snippet noise of cosine std ~0.015."""
    rng = np.random.default_rng(seed)
    N, C = int(DURATION * FPS), text.shape[1]
    u = rng.normal(size=C)
    q, _ = np.linalg.qr(text.T)  # (C, K) orthonormal basis of the text vectors
    u -= q @ (q.T @ u)  # orthogonal to every class text
    u /= np.linalg.norm(u)
    feats = u + 0.015 * rng.normal(size=(N, C))  # (N, C)
    for k, name in enumerate(CLASSES):
        s, e = TRUTH[name]
        feats[int(s * FPS) : int(e * FPS)] += 0.4 * text[k]
    feats *= 7.0  # CLIP image embeddings are not unit length; the mode must not care
    meta = {"fps": FPS, "timestamps": [k / FPS for k in range(N)], "duration": DURATION, "source": "synthetic",
            "clip_model": "stale-tiny", "clip_weights": "random", "num_frames": N}
    return feats.astype(np.float32), meta


def detect_known(args, tiny_clip_name, tiny_clip_weights):
    """``stale detect ARGS`` for the CLASSES of the known features, through CliRunner; never a traceback."""
    base = ["--classes", "high jump,pole vault", "--clip-model", tiny_clip_name, "--clip-weights",
            str(tiny_clip_weights), "--no-progress"]
    r = CliRunner().invoke(app, ["detect", *map(str, args), *base])
    assert "Traceback" not in r.output
    return r


def contents(*paths) -> dict:
    """path -> its bytes (None where it is not a file): compared before and after a run that must not touch them."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in paths}
