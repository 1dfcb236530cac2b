"""Start-up time of the command line (issue 16, item 10): wall seconds of ``stale --version``, ``stale -h`` and
``stale detect -h``, the median of several runs each, every run a new Python process.

    python benchmarks/startup.py                          # this checkout, 7 runs of each
    python benchmarks/startup.py --runs 11 --repo /tmp/old  # another checkout of stale (e.g. `git archive REV`)

Each command runs as ``python -m stale_cli ...`` with ``PYTHONPATH`` set to the checkout, so the checkout's
``stale_cli`` is what starts. Python's own start (``python -c pass``) is printed too: it is the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--version"], ["-h"], ["detect", "-h"])


def wall(argv: list, env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.repo), COLUMNS="100")
    floor = [wall([sys.executable, "-c", "pass"], env, args.repo) for _ in range(args.runs)]
    print(f"{'python -c pass':<24} median {statistics.median(floor):.3f} s")
    for command in COMMANDS:
        wall([sys.executable, "-m", "stale_cli", *command], env, args.repo)  # warm the file cache
        times = [wall([sys.executable, "-m", "stale_cli", *command], env, args.repo) for _ in range(args.runs)]
        print(f"{'stale ' + ' '.join(command):<24} median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
