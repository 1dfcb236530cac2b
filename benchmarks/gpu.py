"""GPU figures of stale in one run (issue 8): run through ``benchmarks/gpu.sh``, which sets up the paths.

    benchmarks/gpu.sh                         # an NVIDIA GPU, fp16, the sizes below
    benchmarks/gpu.sh --device cpu --tiny     # the same code path on a CPU, tiny sizes (a check, not figures)

Needs only the project's packages (no network): CLIP ViT-B-16 with random weights (the cost is that of OpenAI's),
and a real video when one is there (``--video``, default OpenCV's vtest.avi where benchmarks/extract.py keeps
it), else one made here with PyAV. Longer inputs are that video looped by copying packets (no re-encoding).

1. bare encoder: frames/s of ``encode_images`` on preprocessed tensors already on the device (fp16 weights).
2. end to end: frames/s of ``extract_many`` (decoding processes + resize + encode + atomic writes) over
   ``--e2e-videos`` videos of ``--e2e-seconds`` each, with ``--workers`` decoding processes and with one decode
   thread; ratio to the bare encoder.
3. ``stale detect`` (library path, ``Detector.detect``) on a ``--minutes`` video with a random STALE checkpoint:
   seconds after model load, x real time (benchmarks/detect.py's run).
4. a training step on a THUMOS14-sized batch (16 windows x 256 snippets x 512, 15 classes; benchmarks/train.py).

Prints each figure as it comes and writes everything to ``<out>/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/extract.py, detect.py, train.py as modules

import extract as extract_bench  # noqa: E402


def synthetic_video(path: Path, seconds: float, fps: int = 10, size=(768, 576)) -> Path:
    """A moving-pattern mpeg4 video of vtest's size and rate (only when no real video is at hand)."""
    import av
    import numpy as np

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.bit_rate = 1_500_000
        for i in range(int(seconds * fps)):
            img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1).astype(np.uint8)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


def find_video(arg: str | None, work: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    bench_out = HERE.parent / "bench_out"
    for cand in (bench_out / "extract" / "cache" / "vtest.avi", bench_out / "vtest.avi"):
        if cand.is_file():
            return cand, "vtest.avi"
    return synthetic_video(work / "synthetic.mp4", 80.0), "synthetic (PyAV, 768x576, 10 fps)"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_encoder(clip, frames: int, batch_size: int, device) -> dict:
    import torch

    x = torch.randn(batch_size, 3, clip.image_size, clip.image_size, device=device)
    clip.encode_images(x, batch_size=batch_size)  # warm-up (kernels, allocator)
    sync(device)
    n = 0
    t = time.perf_counter()
    while n < frames:
        clip.encode_images(x, batch_size=batch_size)
        n += batch_size
    sync(device)
    dt = time.perf_counter() - t
    return {"frames": n, "seconds": dt, "frames_per_s": n / dt}


def end_to_end(clip, videos: list, fps: float, batch_size: int, workers: int) -> dict:
    from stale_cli.features.extract import extract_many

    with tempfile.TemporaryDirectory() as d:
        s = extract_many(videos, d, clip, fps=fps, batch_size=batch_size, progress=False, workers=workers)
    assert s.done == len(videos) and not s.failed, s
    return {"workers": workers, "videos": len(videos), "frames": s.frames, "seconds": s.seconds,
            "frames_per_s": s.frames_per_second}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="auto", help="auto: fp16 on CUDA (as stale's default)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or HERE.parent / "bench_out" / "gpu"))
    ap.add_argument("--video", help="source video (default: vtest.avi if present, else a synthetic one)")
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=256, help="CLIP batch for the encoder and extraction")
    ap.add_argument("--bare-frames", type=int, default=4096)
    ap.add_argument("--e2e-videos", type=int, default=8)
    ap.add_argument("--e2e-seconds", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (0: stale's default)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the detect input")
    ap.add_argument("--detect-batch-size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU check of this script")
    args = ap.parse_args()
    if args.tiny:
        args.batch_size, args.bare_frames, args.e2e_videos, args.e2e_seconds = 4, 8, 2, 3.0
        args.minutes, args.detect_batch_size, args.train_batch, args.train_steps = 0.1, 8, 1, 1
        args.workers = args.workers or 2  # the decoding processes run even on a 2-core machine

    import torch

    from stale_cli import __version__
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.extract import default_workers

    t_start = time.perf_counter()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stale-gpu-"))
    res = {"stale_version": __version__, "torch": torch.__version__, "device": str(device), "tiny": args.tiny,
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    print(f"stale {__version__}, torch {torch.__version__}, {res.get('gpu', device)}", flush=True)

    def save() -> None:
        res["total_seconds"] = time.perf_counter() - t_start
        (args.out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")

    # 1. bare encoder
    clip = load_clip("ViT-B-16", None, device, precision=args.precision)
    res["precision"] = clip.precision
    res["bare"] = bare_encoder(clip, args.bare_frames, args.batch_size, device)
    print(f"bare encoder ({clip.precision}, batch {args.batch_size}): {res['bare']['frames_per_s']:.0f} frames/s",
          flush=True)
    save()

    # 2. end to end
    src, kind = find_video(args.video, work)
    res["video"] = {"source": str(src), "kind": kind}
    videos = [extract_bench.loop_video(src, work / f"e2e_{i}.avi", args.e2e_seconds) for i in range(args.e2e_videos)]
    workers = args.workers or default_workers()
    res["e2e"] = end_to_end(clip, videos, args.fps, args.batch_size, workers)
    res["e2e_one_thread"] = end_to_end(clip, videos, args.fps, args.batch_size, 1)
    res["e2e_vs_bare"] = res["e2e"]["frames_per_s"] / res["bare"]["frames_per_s"]
    print(f"end to end, {workers} decoding processes: {res['e2e']['frames_per_s']:.0f} frames/s "
          f"({res['e2e_vs_bare']:.3f} of the bare encoder); one decode thread: "
          f"{res['e2e_one_thread']['frames_per_s']:.0f} frames/s", flush=True)
    save()
    del clip

    # 3. stale detect on a long video
    import detect as detect_bench

    long_video = extract_bench.loop_video(src, work / f"detect_{args.minutes:g}min.avi", 60.0 * args.minutes)
    detect_bench.CACHE = work
    ns = argparse.Namespace(fps=args.fps, device=str(device), clip_model="ViT-B-16", batch_size=args.detect_batch_size,
                            threads=0, precision=args.precision)
    res["detect"] = detect_bench.run_once(long_video, ns)
    r = res["detect"]
    print(f"stale detect, {r['duration_s']:.0f} s video: {r['total_s']:.1f} s after model load "
          f"({r['x_real_time']:.1f} x real time); CLIP {r.get('clip_encoding', 0):.1f} s, "
          f"decode-only pass {r['decode']:.1f} s", flush=True)
    save()

    # 4. training step
    import train as train_bench

    res["train"] = train_bench.run_one(str(device), False, args.train_batch, args.train_steps)
    print(f"training step (batch {args.train_batch} x 256 x 512, text encoder fine-tuned): "
          f"{res['train']['s_per_step']:.3f} s, peak {res['train']['peak_GiB']} GiB", flush=True)
    save()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
