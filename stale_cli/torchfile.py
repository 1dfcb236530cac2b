"""Checks on a torch file that hold for any of them: an archive refused before ``torch.load`` reads it, a tensor
that is not finite after. Used by checkpoints (:mod:`stale_cli.model.checkpoint`) and CLIP weights files
(:mod:`stale_cli.features.clip_backbone`) alike."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def archive_problem(path: str | Path) -> str | None:
    """Why the ``.pt`` at ``path`` must not be loaded, or None: a zip archive whose members declare more bytes
    than such a file can hold. torch.save stores its tensors uncompressed; a crafted archive of deflated zeros (2 MB
    that declare 2.6 GB) would make torch.load allocate all of it before anything could be checked."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None  # another format: torch.load says what it is
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    if declared > 2 * size + (64 << 20):
        return (f"its archive expands to {declared / 2**30:.1f} GiB from a {size / 2**20:.1f} MB file, which "
                "torch.save does not write (a compressed or crafted file); refused before loading it")
    return None


def nonfinite_tensor(state: dict) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding a NaN or an infinity, else None.

    By each tensor's float32 sum, which NaN and infinity reach (and which no real weights overflow): about 5x
    faster than an element-wise test (CLIP ViT-B/16: 1.2 s against 6.4 s on 2 heavily shared cores)."""
    with torch.no_grad():
        for key, tensor in state.items():
            if tensor.is_floating_point() and not math.isfinite(float(tensor.sum(dtype=torch.float32))):
                return key
    return None
