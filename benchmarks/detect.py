"""Benchmark of ``stale detect`` on a real video: time per stage and peak memory (issue 4).

    python benchmarks/detect.py                       # 10-minute video, ViT-B-16 random weights, 4 fps, CPU
    python benchmarks/detect.py --device cuda         # the same on a GPU (x real time is printed)
    python benchmarks/detect.py --memory-only --fps 1 # peak RSS of a 10- and a 60-minute input (stand-in rate)

The video is OpenCV's ``vtest.avi`` (79 s, 768x576), fetched from Debian's ``opencv-doc`` package with
``apt-get download`` (no root needed) and looped with PyAV to the requested length. CLIP ViT-B-16 with random
weights (the cost is the same as with OpenAI's) and a STALE head with random weights (THUMOS14 preset: windows of
256 snippets, 50% overlap) built from the default ModelConfig.

Stages: *decode* (a decode-only pass of the same sampler), *CLIP encoding* (time inside ``encode_images`` during
detection), *STALE head* (model forward on all windows), *post-processing* (``segments_from_window`` +
``finalize``). Decoding overlaps encoding in the real run, so the end-to-end time is less than the sum.
Peak memory: each input length runs in its own process; ``ru_maxrss`` of that child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

CACHE = Path(os.environ.get("STALE_BENCH_CACHE", Path(tempfile.gettempdir()) / "stale-bench"))


def fetch_vtest() -> Path:
    """vtest.avi from Debian's opencv-doc, with benchmarks/extract.py's fetch (one copy of that logic)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from extract import fetch_vtest as fetch  # benchmarks/extract.py

    return Path(fetch(CACHE))


def looped(src: Path, minutes: float) -> Path:
    """``src`` repeated to ``minutes`` minutes (re-encoded once with mpeg4 by PyAV; cached)."""
    import av

    dst = CACHE / f"vtest_{minutes:g}min.mp4"
    if dst.is_file():
        return dst
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        rate = stream.average_rate or Fraction(10)
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(stream)]
    total = int(minutes * 60 * rate)
    tmp = dst.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("mpeg4", rate=rate)
        vs.width, vs.height = frames[0].shape[1], frames[0].shape[0]
        vs.pix_fmt = "yuv420p"
        vs.bit_rate = 1_500_000
        for i in range(total):
            for packet in vs.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    shutil.move(tmp, dst)
    return dst


def random_checkpoint(clip_model: str, fps: float) -> Path:
    """A STALE checkpoint with random weights (default ModelConfig, THUMOS14 windows)."""
    import open_clip
    import torch

    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.datasets import THUMOS14
    from stale_cli.model.stale import STALE

    path = CACHE / f"random_{clip_model}_{fps:g}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        cfg = ModelConfig(clip_model=clip_model)
        model = STALE(cfg, open_clip.create_model(clip_model, pretrained=None))
        save_checkpoint(path, model, cfg, LossConfig(), THUMOS14.data, ["a"], fps, clip_model,
                        dataset=THUMOS14.name)
    return path


def timed(obj, name: str, acc: dict, key: str):
    """Wrap ``obj.name`` so that its wall time accumulates in ``acc[key]``."""
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    setattr(obj, name, wrapper)


def run_once(video: Path, args) -> dict:
    """One detection run in this process, with per-stage times."""
    import torch

    import stale_cli.detection.detect as detect_mod
    import stale_cli.model.postprocess as post
    from stale_cli.detection.detect import DetectSettings, Detector
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.video import FrameSampler

    torch.set_num_threads(args.threads or torch.get_num_threads())
    classes = ["walking", "running", "riding a bike", "talking on a phone", "carrying a bag"]
    ckpt = random_checkpoint(args.clip_model, args.fps)
    clip = load_clip(args.clip_model, None, device=args.device, precision=getattr(args, "precision", "fp32"))
    acc: dict = {}
    timed(clip, "encode_images", acc, "clip_encoding")
    det = Detector(DetectSettings(classes=classes, checkpoint=ckpt, batch_size=args.batch_size), device=args.device,
                   need_video=True, clip=clip)
    timed(det.model, "forward", acc, "stale_head")
    for name in ("segments_from_window", "finalize"):
        timed(post, name, acc, "post_processing")
    t0 = time.perf_counter()
    result = det.detect(video)
    total = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    # Decode-only pass of the same sampler (decoding overlaps encoding in the real run).
    t = time.perf_counter()
    n = sum(len(c.indices) for c in FrameSampler(video, args.fps, transform=clip.resize_frames, chunk_size=args.batch_size))
    acc["decode"] = time.perf_counter() - t
    return {
        "video": str(video), "duration_s": result.duration, "frames": n, "segments": len(result.segments),
        "total_s": total, **acc, "head_plus_post_share": (acc.get("stale_head", 0) + acc.get("post_processing", 0)) / total,
        "x_real_time": result.duration / total, "device": args.device,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(video: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(video), "--fps", str(args.fps), "--device", args.device,
           "--clip-model", args.clip_model, "--batch-size", str(args.batch_size), "--threads", str(args.threads or 0),
           "--precision", args.precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--long-minutes", type=float, default=60.0)
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clip-model", default="ViT-B-16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", help="CLIP's weights: fp32 | bf16 | fp16 | auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory comparison")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(run_once(args.child, args)))
        return
    src = fetch_vtest()
    short = looped(src, args.minutes)
    r = child(short, args)
    print(json.dumps(r, indent=2))
    if not args.memory_only:
        print(f"{args.minutes:g}-min video on {args.device}: total {r['total_s']:.1f} s ({r['x_real_time']:.2f} x real time); "
              f"decode {r['decode']:.1f} s (decode-only pass), CLIP encoding {r['clip_encoding']:.1f} s, "
              f"STALE head {r['stale_head']:.2f} s, post-processing {r['post_processing']:.2f} s: "
              f"head + post = {100 * r['head_plus_post_share']:.2f}% of the total")
    if args.memory_only or args.long_minutes:
        long = looped(src, args.long_minutes)
        r2 = child(long, args)
        print(json.dumps(r2, indent=2))
        print(f"peak RSS: {args.minutes:g} min {r['maxrss_mb']:.0f} MB, {args.long_minutes:g} min {r2['maxrss_mb']:.0f} MB "
              f"(ratio {r2['maxrss_mb'] / r['maxrss_mb']:.3f}) at {args.fps:g} fps")


if __name__ == "__main__":
    main()
