"""Cost of the mask/curve blend in post-processing: ``segments_from_window`` with ``mask_weight`` 1 (the paper's
masks alone) against 0.5 (the default), side by side on THUMOS14-shaped windows.

    python benchmarks/postprocess.py [--windows 200] [--repeats 5]

Windows of T=256 snippets, K=20 classes, probabilities drawn so that every window has the full 100 candidates,
random masks; the two settings alternate, and each figure is the best of the repeats. Then ``finalize`` on all the
windows' segments as one video (windows overlapping by half, the default settings), best of the repeats: the
per-video step, whose Soft-NMS input is capped at ``pre_nms_top_n`` segments (tests/test_postprocess.py checks
the caps by size; the time is measured here).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stale_cli.model.postprocess import DetectConfig, finalize, segments_from_window  # noqa: E402
from stale_cli.timeline import Timeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    T, K = 256, 20
    windows = []
    for _ in range(args.windows):
        p = rng.dirichlet(np.full(K + 1, 0.3), size=T)  # (T, K+1)
        windows.append((p, rng.random((T, T))))
    timeline = Timeline(0.0, 0.2, T)
    cfgs = {"masks alone (mask_weight 1)": replace(DetectConfig(), mask_weight=1.0),
            "blend (mask_weight 0.5, default)": DetectConfig()}
    best = {name: float("inf") for name in cfgs}
    for _ in range(args.repeats):
        for name, cfg in cfgs.items():
            t0 = time.perf_counter()
            for p, m in windows:
                segments_from_window(p, m, timeline, T, cfg)
            best[name] = min(best[name], (time.perf_counter() - t0) / args.windows)
    for name, s in best.items():
        print(f"{name:34s} {1e3 * s:.3f} ms per window")
    a, b = best.values()
    print(f"blend / masks alone: {b / a:.3f}")

    hop = timeline.step * T / 2
    parts = [segments_from_window(p, m, Timeline(i * hop, timeline.step, T), T)
             for i, (p, m) in enumerate(windows)]
    duration = hop * (len(windows) + 1)
    best_final = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dets = finalize(parts, duration)
        best_final = min(best_final, time.perf_counter() - t0)
    print(f"finalize, {len(windows)} windows as one {duration:.0f} s video: {1e3 * best_final:.1f} ms "
          f"({sum(map(len, parts))} segments in, {len(dets)} out)")


if __name__ == "__main__":
    main()
