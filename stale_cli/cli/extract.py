"""``stale extract-features``: CLIP features of videos, one ``.npy`` + ``.json`` per video."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stale_cli.cli.app import (
    ClipModelOption,
    ClipWeightsOption,
    Command,
    DeviceOption,
    PrecisionOption,
    ProgressOption,
    MAX_BATCH,
    OutputOption,
    app,
    check_range,
    error,
    fail_batch,
    info,
    resolve_device,
    show_progress,
    user_errors,
    warning,
    wrote,
)
from stale_cli.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FEATURE_FPS, default_workers


@app.command("extract-features", cls=Command)
def extract_features(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT", help="Video files, directories (searched recursively) and @list.txt files."
    ),
    output: Path = OutputOption("Directory for <video>.npy + <video>.json.", required=True, metavar="DIR"),
    fps: float = typer.Option(
        DEFAULT_FEATURE_FPS, "--fps", help="Frames per second to sample (by presentation time); one feature row each."
    ),
    clip_model: str = ClipModelOption,
    clip_weights: str = ClipWeightsOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="Frames per forward pass."),
    workers: int = typer.Option(
        default_workers(), "--workers", "-j", help="Decoding processes, each on its own video, feeding the one "
        "encoder. 1: decode in a thread of this process.", show_default="half the CPUs, at most 8",
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: do only shard I of N (0-based; deterministic, by file name). Under torchrun "
        "the default is RANK/WORLD_SIZE.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos whose features already exist."),
    decoder: str = typer.Option(
        "auto", "--decoder", metavar="auto|pyav|decord", help="auto (PyAV, decord for files PyAV cannot read) | "
        "pyav | decord (PyAV takes over where decord fails part-way).",
    ),
    progress: bool = ProgressOption,
) -> None:
    """Sample frames at --fps, encode them with CLIP's image encoder, write float16 (T, D) features per video.

    A rerun skips videos whose files exist with the same settings; bad files are reported and skipped, and the
    command exits with status 1 at the end if any failed.

    Example: stale extract-features videos/ -o feats/
    """
    with user_errors():
        from stale_cli.errors import InputError
        from stale_cli.features.clip_backbone import load_clip
        from stale_cli.features.extract import extract_many
        from stale_cli.fileio import check_writable, missing_dirs, remove_empty_dirs
        from stale_cli.guard import OutputGuard
        from stale_cli.inputs import parse_shard, select_shard
        from stale_cli.sidecar import MAX_FEATURE_FPS, MIN_FEATURE_FPS
        from stale_cli.video_ids import video_ids

        out = output
        if str(out) == "-":
            raise InputError("--output -: features are files (<video>.npy + <video>.json); give a directory")
        check_range("--fps", fps, MIN_FEATURE_FPS, MAX_FEATURE_FPS)
        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        if decoder not in ("auto", "pyav", "decord"):
            raise InputError(f"--decoder must be auto, pyav or decord, not {decoder!r}")
        shard_spec = parse_shard(shard)
        list_files: list = []
        paths, bad_inputs = _collect(inputs, lists=list_files)
        ids = video_ids(paths)  # over the whole batch, so names do not depend on the shard
        if shard_spec is not None:
            index, count = shard_spec
            keep = set(select_shard(paths, index, count))
            ids = [v for p, v in zip(paths, ids) if p in keep]
            paths = [p for p in paths if p in keep]
            info(f"shard {index}/{count}: {len(paths)} video(s)")
        check_writable(out, f"--output {out}")
        guard = OutputGuard()  # extract_many declares each file it will write to it, before any video is decoded
        guard.inputs(paths)
        for list_file in list_files:
            guard.input(list_file, f"the list file {list_file}")
        guard.input_if_file(clip_weights, f"the CLIP weights {clip_weights}")
        clip = load_clip(clip_model, clip_weights, resolve_device(device), precision=precision)
        made = missing_dirs(out)
        try:
            summary = extract_many(
                paths, out, clip, fps=fps, batch_size=batch_size, overwrite=overwrite, progress=show_progress(progress),
                ids=ids, decoder=decoder, on_warning=warning, on_error=error, workers=workers, guard=guard,
            )
        finally:
            remove_empty_dirs(made)  # --output made for lock files only: every video failed
        if summary.busy:
            holders = ", ".join(sorted({holder for _, holder in summary.busy}))
            warning(f"{len(summary.busy)} video(s) left to another run that is extracting them ({holders}); "
                    "rerun when it has finished to check")
        if summary.done:
            wrote(out, f"{summary.done} feature file(s) (.npy + .json)")
        info(f"done {summary.done}, skipped {summary.skipped} (already extracted), failed {len(summary.failed)}; "
             f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.frames_per_second:.1f} frames/s)")
        failed = bad_inputs + [str(path) for path, _ in summary.failed]
        if failed:
            fail_batch(failed, len(paths) + len(bad_inputs))


def _collect(inputs, kinds=("video",), nothing: str = "no videos to extract", lists: Optional[list] = None):
    """Collect the inputs item by item, so that one bad INPUT (or one bad line of an @list, or a broken link in a
    directory) is reported and the others still run. ``lists``: receives the @list files read.

    When no input is usable the command stops with one error line that names them all.
    """
    from stale_cli.errors import InputError, StaleError
    from stale_cli.inputs import collect_inputs

    paths, seen, bad, reasons = [], set(), [], []
    for item in inputs:
        problems: list = []
        try:
            found = collect_inputs([item], kinds=kinds, bad=problems, lists=lists)
        except StaleError as e:
            found = []
            problems.append((item, str(e)))
        for entry, reason in problems:
            bad.append(entry)
            reasons.append(reason)
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                paths.append(p)
    if not paths:
        raise InputError(nothing + (f": {'; '.join(reasons)}" if reasons else ""))
    for reason in reasons:
        error(reason)
    return paths, bad
