"""Cost of writing ``stale detect -o FILE`` for a batch (issue 9, item 8): before and after, side by side.

    python benchmarks/detect_output.py                    # 400 videos x 100 segments, JSON
    python benchmarks/detect_output.py --videos 2000      # the issue's batch size (the old way takes minutes)

*before*: the file rewritten (atomically) with every video finished so far after each video, as ``stale detect``
did up to 3ba9b43: work and bytes grow with the square of the batch. *after*: per video, the journal
checked for it, its lock taken and one journal line appended and fsync'ed (:mod:`stale_cli.detection.resume`), and one
write of the file at the end. Synthetic detections (no
model runs); both ways in one process, so the ratio is meaningful on a noisy machine. Prints CPU seconds, wall
seconds and bytes written for each.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stale_cli.detection.detections import Segment, VideoDetections  # noqa: E402
from stale_cli.detection.outputs import ResultWriter, render  # noqa: E402
from stale_cli.detection.resume import DetectJournal  # noqa: E402
from stale_cli.fileio import write_text_atomic  # noqa: E402

META = {"mode": "clip", "classes": [f"class {k}" for k in range(20)]}


def videos(n: int, segments: int, sources: list[Path]) -> list[VideoDetections]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        segs = []
        for s in (rng.uniform(0, 600) for _ in range(segments)):
            k = rng.randrange(20)
            segs.append(Segment(f"class {k}", s, s + rng.uniform(1, 20), rng.random(), k))
        out.append(VideoDetections(f"video_{i:05d}", str(sources[i]), 620.0, segs, classes=META["classes"]))
    return out


def before(vids: list[VideoDetections], path: Path) -> int:
    written = 0
    for k in range(1, len(vids) + 1):
        text = render(vids[:k], "json", META)
        write_text_atomic(path, text)
        written += len(text.encode("utf-8"))
    return written


def after(vids: list[VideoDetections], path: Path, sources: list[Path]) -> int:
    writer = ResultWriter(path, "json", META, order=[v.video_id for v in vids])
    journal = DetectJournal.for_writer(writer, META)
    for v, src in zip(vids, sources):  # what detect_batch does per video, less the detection itself
        assert journal.finished(v.video_id, src) is None
        lock = journal.claim(v.video_id, src)
        journal.append(v, src)
        lock.release()
        writer.add(v)
    writer.close()
    return journal.path.stat().st_size + path.stat().st_size


def timed(fn, *args) -> tuple[float, float, int]:
    c0, w0 = time.process_time(), time.perf_counter()
    written = fn(*args)
    return time.process_time() - c0, time.perf_counter() - w0, written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--segments", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sources = []
        for i in range(args.videos):
            sources.append(d / f"video_{i:05d}.npy")
            sources[-1].write_bytes(b"")
        vids = videos(args.videos, args.segments, sources)
        rows = [("before (rewrite per video)", *timed(before, vids, d / "old.json")),
                ("after (journal + one write)", *timed(after, vids, d / "new.json", sources))]
    print(f"{args.videos} videos x {args.segments} segments, JSON")
    for name, cpu, wall, written in rows:
        print(f"  {name:28s} CPU {cpu:8.2f} s   wall {wall:8.2f} s   written {written / 1e6:9.1f} MB")
    print(f"  ratio before/after: CPU {rows[0][1] / rows[1][1]:.0f}x, bytes {rows[0][3] / rows[1][3]:.0f}x")


if __name__ == "__main__":
    main()
