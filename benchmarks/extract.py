"""Benchmark of `stale extract-features`: throughput vs the bare model, decoders, peak memory vs video length.

    python benchmarks/extract.py                 # everything, results in bench_out/extract/results.json

Input: OpenCV's sample video vtest.avi (768x576, 10 fps, 79.5 s, MS-MPEG4), fetched from Debian's opencv-doc
package with `apt-get download` + `dpkg -x` (no other network use). Longer inputs are vtest.avi looped by
copying its packets (no re-encoding), so they are real video too. CLIP is ViT-B-16 with random weights (the
weights do not change the cost). All figures of one run are measured side by side, so they share the machine's
load at the time; the CPU is shared, numbers are noisy, compare ratios.

1. bare model: frames/s of ``clip.encode_images`` on the pre-decoded, preprocessed float tensors of the same
   frames, same batch size; end to end: frames/s of ``extract_many`` (decode thread + encode + write); the two
   are interleaved (bare, e2e, bare, e2e) and summed, so drifting load hits both alike.
2. decode only: decord and PyAV sampling at the same fps with the CLIP resize, and all source frames per second.
3. peak RSS: ``extract_many`` on a 1-minute and a 30-minute input, each in its own subprocess (ru_maxrss).
4. precision: end-to-end ``extract_many`` with CLIP's weights in fp32 and in bf16 (``--precisions``; the same
   random weights), interleaved (fp32, bf16, fp32, bf16), frames/s of each, their ratio, and the cosine between
   the two runs' feature rows (min and mean over rows).

    python benchmarks/extract.py --only precision        # section 4 alone
5. decoding processes: peak memory (RSS summed over this process and all its descendants, sampled every 0.1 s)
   of ``extract_many`` with ``--workers`` processes on 4 and on 32 copies of a 20 s vtest, each count in a fresh
   process; a low sampling rate keeps the encoding short while every source frame is decoded.

    python benchmarks/extract.py --only workers-memory   # section 5 alone
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fetch_vtest(cache: Path) -> Path:
    """vtest.avi from Debian's opencv-doc package (downloaded once into `cache`)."""
    found = list(cache.rglob("vtest.avi"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "opencv-doc"], cwd=cache, check=True, capture_output=True)
    deb = next(cache.glob("opencv-doc_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(cache / "pkg")], check=True)
    deb.unlink()
    found = list(cache.rglob("vtest.avi"))
    if not found:
        sys.exit("opencv-doc has no vtest.avi")
    keep = cache / "vtest.avi"
    shutil.copy(found[0], keep)
    shutil.rmtree(cache / "pkg")
    return keep


def loop_video(src: Path, dst: Path, seconds: float) -> Path:
    """Copy src's video packets, looping with shifted timestamps, until `seconds` of video are written."""
    import av

    if dst.exists():
        return dst
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        tb = s_in.time_base
        packets = [p for p in inp.demux(s_in) if p.size and p.pts is not None]
        span = packets[-1].pts + (packets[-1].duration or packets[1].pts - packets[0].pts) - packets[0].pts
        orig = [(p.pts, p.dts) for p in packets]
        offset = 0
        while True:
            for p, (pts0, dts0) in zip(packets, orig):
                if float((pts0 + offset) * tb) >= seconds:
                    return dst
                p.pts, p.dts = pts0 + offset, (dts0 + offset if dts0 is not None else None)
                p.time_base = tb
                p.stream = s_out
                out.mux(p)
            offset += span


def rss_child(video: str, fps: float, batch_size: int) -> None:
    """Subprocess body: extract one video with ViT-B-16 (random), print peak RSS and what was done as JSON."""
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.extract import extract_many

    clip = load_clip("ViT-B-16", None)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        s = extract_many([Path(video)], d, clip, fps=fps, batch_size=batch_size, progress=False)
        dt = time.perf_counter() - t
        meta = json.loads((Path(d) / (Path(video).stem + ".json")).read_text())
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_model_load_mb": after_load / 1024,
        "rows": s.frames, "source_frames": meta["num_frames"], "duration_s": meta["duration"], "seconds": dt,
    }))


def tree_rss_mb(root: int) -> float:
    """RSS of process ``root`` and all its descendants, MB (Linux /proc)."""
    parent, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)], rss[int(d.name)] = int(fields[1]), int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(p for p, pp in parent.items() if pp == pid)
    return total / 2**20


def workers_child(folder: Path, count: int, workers: int) -> None:
    """Subprocess body of section 5: extract `count` videos of `folder` with `workers` decoding processes."""
    import threading

    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.extract import extract_many

    clip = load_clip("ViT-B-16", None, precision="auto")
    peak, stop = [0.0], threading.Event()

    def watch():
        while not stop.wait(0.1):
            peak[0] = max(peak[0], tree_rss_mb(os.getpid()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    videos = sorted(folder.glob("*.avi"))[:count]
    with tempfile.TemporaryDirectory() as d:
        s = extract_many(videos, d, clip, fps=0.1, batch_size=2, progress=False, workers=workers)
    stop.set()
    watcher.join()
    print(json.dumps({"videos": count, "workers": workers, "done": s.done, "rows": s.frames,
                      "seconds": round(s.seconds, 1), "peak_tree_rss_mb": round(peak[0], 1),
                      "peak_rss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def compare_precisions(video: Path, device, fps: float, bs: int, precisions: list, reps: int) -> dict:
    """Section 4: end-to-end extract_many of `video` with CLIP's weights in each precision (same weights)."""
    import numpy as np
    import torch

    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.extract import extract_many

    torch.manual_seed(0)
    clips = {p: load_clip("ViT-B-16", None, device, precision=p) for p in precisions}
    state = clips[precisions[0]].model.state_dict()
    for p in precisions[1:]:
        clips[p].model.load_state_dict(state)  # load_state_dict keeps each model's own dtypes
    seconds = {p: [] for p in precisions}
    feats, frames = {}, 0
    for p, clip in clips.items():  # warm-up
        clip.encode_images(torch.zeros(2, 224, 224, 3, dtype=torch.uint8), batch_size=2)
    for rep in range(reps):
        for p, clip in clips.items():
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                s = extract_many([video], d, clip, fps=fps, batch_size=bs, progress=False)
                seconds[p].append(time.perf_counter() - t)
                assert s.done == 1
                feats[p] = np.load(Path(d) / f"{video.stem}.npy").astype(np.float64)
                frames = s.frames
            print(f"precision rep {rep}: {p} {frames / seconds[p][-1]:.2f} frames/s", flush=True)
    base, other = precisions[0], precisions[1]
    a, b = feats[base], feats[other]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    out = {"precision_frames": frames, "precision_reps": reps}
    for p in precisions:
        out[f"e2e_fps_{p}"] = frames * reps / sum(seconds[p])
        out[f"e2e_seconds_{p}"] = seconds[p]
    out[f"speedup_{other}_vs_{base}"] = out[f"e2e_fps_{other}"] / out[f"e2e_fps_{base}"]
    out["cosine_min"], out["cosine_mean"] = float(cos.min()), float(cos.mean())
    print(f"{other} / {base} end to end: {out[f'speedup_{other}_vs_{base}']:.2f}x; cosine min {cos.min():.5f} "
          f"mean {cos.mean():.5f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "extract")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of vtest.avi used for throughput")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rss-fps", type=float, default=1 / 30, help="sampling rate of the memory runs (see below)")
    ap.add_argument("--rss-batch-size", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--only", choices=["precision", "workers-memory"], help="run only this section")
    ap.add_argument("--workers", type=int, default=2, help="section 5: decoding processes")
    ap.add_argument("--workers-child", nargs=3, metavar=("DIR", "COUNT", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--precisions", default="fp32,bf16", help="section 4: baseline,other")
    ap.add_argument("--precision-reps", type=int, default=2)
    ap.add_argument("--rss-child", nargs=3, metavar=("VIDEO", "FPS", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child[0], float(args.rss_child[1]), int(args.rss_child[2]))
    if args.workers_child:
        return workers_child(Path(args.workers_child[0]), int(args.workers_child[1]), int(args.workers_child[2]))

    import torch

    from stale_cli import __version__
    from stale_cli.features.clip_backbone import load_clip
    from stale_cli.features.extract import DEFAULT_FEATURE_FPS, extract_many
    from stale_cli.features.video import FrameSampler

    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    vtest = fetch_vtest(args.out / "cache")
    clip_in = loop_video(vtest, args.out / f"vtest_{args.seconds:g}s.avi", args.seconds)
    fps, bs = DEFAULT_FEATURE_FPS, args.batch_size
    device = torch.device(args.device)
    res = {"stale_version": __version__, "fps": fps, "batch_size": bs, "device": str(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "input": str(clip_in)}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)

    if args.only == "workers-memory":
        (args.out / "copies").mkdir(exist_ok=True)
        copies = [loop_video(clip_in, args.out / "copies" / f"v{i:02d}.avi", args.seconds) for i in range(32)]
        for count in (4, 32):
            out = subprocess.run([sys.executable, __file__, "--workers-child", str(copies[0].parent), str(count),
                                  str(args.workers)], check=True, capture_output=True, text=True).stdout
            res[f"workers_{count}_videos"] = json.loads(out.strip().splitlines()[-1])
            print(f"{count} videos: {res[f'workers_{count}_videos']}", flush=True)
        res["tree_rss_ratio_32_vs_4"] = (res["workers_32_videos"]["peak_tree_rss_mb"]
                                         / res["workers_4_videos"]["peak_tree_rss_mb"])
        print(f"peak RSS of the process tree, 32 / 4 videos: {res['tree_rss_ratio_32_vs_4']:.3f}", flush=True)
        (args.out / "workers_memory.json").write_text(json.dumps(res, indent=2) + "\n")
        return
    if args.only == "precision":
        res.update(compare_precisions(clip_in, device, fps, bs, args.precisions.split(","), args.precision_reps))
        (args.out / "precision.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=2))
        return

    # 2. decode only (first: it also warms the file cache)
    clip = load_clip("ViT-B-16", None, device)
    for dec in ("decord", "pyav"):
        t = time.perf_counter()
        sampler = FrameSampler(vtest, fps, transform=clip.resize_frames, chunk_size=bs, decoder=dec)
        n = sum(len(c.indices) for c in sampler)
        dt = time.perf_counter() - t
        res[f"decode_{dec}"] = {"samples": n, "source_frames": sampler.info.num_frames, "seconds": dt,
                                "samples_per_s": n / dt, "source_frames_per_s": sampler.info.num_frames / dt}
        print(f"decode {dec}: {n / dt:.1f} samples/s, {sampler.info.num_frames / dt:.1f} source frames/s", flush=True)

    # 1. bare model vs end to end, interleaved
    frames = torch.cat([c.frames for c in FrameSampler(clip_in, fps, transform=clip.resize_frames)])
    pre = clip.preprocess(frames)  # (N, 3, 224, 224) float
    n = pre.shape[0]
    clip.encode_images(pre[:bs], batch_size=bs)  # warm-up
    bare_t, e2e_t = [], []
    for rep in range(2):
        t = time.perf_counter()
        clip.encode_images(pre, batch_size=bs)
        bare_t.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            s = extract_many([clip_in], d, clip, fps=fps, batch_size=bs, progress=False)
            e2e_t.append(time.perf_counter() - t)
            assert s.done == 1 and s.frames == n
        print(f"rep {rep}: bare {n / bare_t[-1]:.2f} frames/s, end to end {n / e2e_t[-1]:.2f} frames/s", flush=True)
    res["frames"] = n
    res["bare_model_fps"] = n * len(bare_t) / sum(bare_t)
    res["end_to_end_fps"] = n * len(e2e_t) / sum(e2e_t)
    res["ratio"] = res["end_to_end_fps"] / res["bare_model_fps"]
    res["bare_seconds"], res["e2e_seconds"] = bare_t, e2e_t
    print(f"bare {res['bare_model_fps']:.2f} frames/s, end to end {res['end_to_end_fps']:.2f} frames/s, "
          f"ratio {res['ratio']:.3f}", flush=True)
    del pre, frames

    # 3. peak RSS, 1 min vs 30 min, each in a fresh process. The whole file is read (decord seeks between samples);
    # the sampling rate is lowered only so ViT-B-16 on a small CPU finishes in minutes.
    if not args.skip_rss:
        for minutes in (1, 30):
            video = loop_video(vtest, args.out / f"vtest_{minutes}min.avi", 60.0 * minutes)
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(video), str(args.rss_fps), str(args.rss_batch_size)],
                check=True, capture_output=True, text=True,
            ).stdout
            res[f"rss_{minutes}min"] = json.loads(out.strip().splitlines()[-1])
            print(f"{minutes} min: {res[f'rss_{minutes}min']}", flush=True)
        res["rss_ratio_30_vs_1"] = res["rss_30min"]["peak_rss_mb"] / res["rss_1min"]["peak_rss_mb"]
        res["rss_fps"], res["rss_batch_size"] = args.rss_fps, args.rss_batch_size
        print(f"peak RSS 30 min / 1 min: {res['rss_ratio_30_vs_1']:.3f}")
    res.update(compare_precisions(clip_in, device, fps, bs, args.precisions.split(","), args.precision_reps))
    res["total_seconds"] = time.perf_counter() - t_start
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
