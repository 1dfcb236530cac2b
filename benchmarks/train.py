"""Seconds per training step and peak memory for a THUMOS14-sized batch, text encoder fine-tuned and frozen.

    python benchmarks/train.py [--device cpu|cuda] [--batch-size 16] [--steps 3] [--threads N]

A batch is ``--batch-size`` windows of T=256 snippets of 512-d features (CLIP ViT-B/16 width), 15 classes (a
THUMOS14 75/25 split's seen classes), the paper's model config, a real ViT-B-16 text tower with random weights
(architecture only; nothing is downloaded). One step = text encoding (Eq. 2) + head + loss + backward + Adam.
The text encoder's share is the time of its part of a step run alone (encoding, backward from its output,
clipping and Adam on its parameters) over the full step time; medians of ``--steps`` steps after one warm-up. Each setting runs in its own process so that the peak
memory (CPU: max RSS of the process; CUDA: max allocated) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CLASSES = ["BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "Diving",
           "FrisbeeCatch", "GolfSwing", "HighJump", "JavelinThrow", "LongJump", "Shotput", "TennisSwing",
           "VolleyballSpiking"]  # thumos14/75_25/0 seen classes


def _median_seconds(fn, device, steps: int) -> float:
    import torch

    times = []
    for i in range(steps + 1):  # the first call warms up allocators and kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _train_step(model, criterion, optimizer, batch, device) -> None:
    """One full step: text encoding (Eq. 2) + head + losses (Eqs. 9-12) + backward + clipping + Adam."""
    import torch

    x, valid, targets = batch
    text = model.encode_classes(CLASSES)  # (K+1, C)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = criterion(model(x, valid, text), targets)["total"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()


def _text_step(model, optimizer, device) -> None:
    """The text encoder's part of a step alone: encoding, backward from its output, clipping + Adam on its params."""
    import torch

    params = [p for p in model.text_encoder.parameters() if p.requires_grad]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        text = model.encode_classes(CLASSES)  # (K+1, C)
    optimizer.zero_grad(set_to_none=True)
    text.float().square().mean().backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def run_one(device_name: str, freeze: bool, batch_size: int, steps: int) -> dict:
    import open_clip
    import torch

    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.losses import STALELoss
    from stale_cli.model.stale import STALE

    device = torch.device(device_name)
    torch.manual_seed(0)
    cfg = ModelConfig(freeze_text_encoder=freeze)  # paper defaults: T=256, C=512, ViT-B-16
    model = STALE(cfg, open_clip.create_model(cfg.clip_model, pretrained=None)).to(device).train()
    criterion = STALELoss(cfg, LossConfig())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    B, T, K = batch_size, cfg.num_snippets, len(CLASSES)
    labels = torch.full((B, T), K, dtype=torch.long)
    masks = torch.zeros(B, T, T)
    for b in range(B):  # two instances per window
        for s, e, k in ((20, 60, b % K), (150, 170, (b + 3) % K)):
            labels[b, s:e] = k
            masks[b, s:e, s:e] = 1.0
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, 200:] = False  # a last, shorter window
    targets = {"labels": labels.to(device), "masks": masks.to(device), "fg": (labels < K).float().to(device),
               "valid": valid.to(device)}
    batch = (torch.randn(B, T, cfg.feature_dim, device=device), valid.to(device), targets)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = _median_seconds(lambda: _train_step(model, criterion, optimizer, batch, device), device, steps)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    text_opt = torch.optim.Adam([p for p in model.text_encoder.parameters() if p.requires_grad], lr=1e-5)
    text = _median_seconds(lambda: _text_step(model, text_opt, device), device, steps)
    return {
        "device": str(device), "text_encoder": "frozen" if freeze else "fine-tuned", "batch": B, "T": T, "K": K,
        "trainable_params_M": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
        "s_per_step": round(step, 3), "text_s": round(text, 3), "text_share": round(min(text / step, 1.0), 3),
        "peak_GiB": round(peak / 2**30, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--one", choices=["fine-tuned", "frozen"], help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.device, args.one == "frozen", args.batch_size, args.steps)))
        return
    rows = []
    for mode in ("fine-tuned", "frozen"):
        cmd = [sys.executable, __file__, "--one", mode, "--device", args.device, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--threads", str(args.threads)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    print(f"{'text encoder':<12} {'device':<7} {'batch':>5} {'s/step':>8} {'text s':>7} {'text share':>10} "
          f"{'peak GiB':>9} {'trainable M':>11}")
    for r in rows:
        print(f"{r['text_encoder']:<12} {r['device']:<7} {r['batch']:>5} {r['s_per_step']:>8.3f} {r['text_s']:>7.3f} "
              f"{100 * r['text_share']:>9.1f}% {r['peak_GiB']:>9.2f} {r['trainable_params_M']:>11.1f}")


if __name__ == "__main__":
    main()
