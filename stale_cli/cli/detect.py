"""``stale detect``: when does each named action happen? Segments in seconds, with a label and a score."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional

import typer

from stale_cli.cli.app import (
    ClassesFileOption,
    ClassesOption,
    ClipWeightsOption,
    Command,
    DeviceOption,
    PrecisionOption,
    ProgressOption,
    MAX_BATCH,
    MAX_COUNT,
    OutputOption,
    app,
    check_range,
    error,
    fail_batch,
    info,
    read_class_names,
    resolve_device,
    show_progress,
    stderr,
    stdout,
    user_errors,
    warning,
    wrote,
)
from stale_cli.detection.reading import ReadingConfig  # no numpy: -h stays fast


class _Progress:
    """One progress bar at a time on stderr, never one inside another: while a video is being detected, its
    frames (decoded and encoded by CLIP) with their rate and ETA, named "video 2/5 NAME" in a batch; for a batch
    of feature files only (nothing to decode), the videos done."""

    def __init__(self, paths: list, fps: float):
        self.position = {p: i for i, p in enumerate(paths)}
        self.count, self.fps, self.bar = len(paths), fps, None
        self.by_video = any(p.suffix.lower() != ".npy" for p in paths)
        if not self.by_video and self.count > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=self.count, unit="video", file=stderr.file, dynamic_ncols=True, leave=False)

    def start(self, path: Path, video_id: str) -> None:
        if not self.by_video:
            return
        self.close()
        if path.suffix.lower() == ".npy":
            return
        from tqdm import tqdm

        from stale_cli.features.video import num_samples, probe_header
        from stale_cli.text import terminal_text

        _, end = probe_header(path)
        name = path.name if self.count == 1 else f"video {self.position.get(path, 0) + 1}/{self.count} {path.name}"
        name = terminal_text(name)  # tqdm writes it to the terminal as it is
        self.bar = tqdm(total=num_samples(end, self.fps) if end else None, desc=name, unit="frame",
                        file=stderr.file, dynamic_ncols=True, leave=False)

    def frames(self, n: int) -> None:
        if self.by_video and self.bar is not None:
            self.bar.update(n)

    def done(self) -> None:
        """An input finished (or failed): its frame bar goes before anything is printed, the video bar moves."""
        if self.by_video:
            self.close()
        elif self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def note(message: str) -> None:
    """An informational line on stderr (hidden by -q)."""
    logging.getLogger("stale_cli.cli").info(message)


@app.command("detect", cls=Command)
def detect(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT",
        help="Video files, feature files (.npy with their .json sidecar), directories (searched recursively) and "
        "@list.txt files.",
    ),
    classes: Optional[str] = ClassesOption,
    classes_file: Optional[Path] = ClassesFileOption,
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="A trained STALE checkpoint (stale train).",
        show_default="the one checkpoint in weights/, else the training-free mode",
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", metavar="stale|clip",
        help="Force the trained model or the training-free CLIP similarity baseline."
    ),
    output: Optional[Path] = OutputOption(
        "A file (all videos), a directory (one <video_id>.<ext> per video) or - (stdout). A rerun resumes; "
        "concurrent runs share the work. Without it: a table per video on stdout.", metavar="FILE|DIR|-",
    ),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", metavar="json|csv|srt", help="Format of --output.",
        show_default="from the --output extension, else json",
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Draw per-class scores over time and the segments to this PNG (one per video: "
        # "\\[": Typer renders help as rich markup, which would eat "[plot]".
        "<stem>_<video_id>.png when several). Needs matplotlib (pip install 'stale-cli\\[plot]').",
    ),
    html: Optional[Path] = typer.Option(
        None, "--html", help="Write an HTML report to see the detections: the video with a clickable timeline "
        "and a segment table. A file (one page for all inputs) or a directory (<video_id>.html per input and an "
        "index.html); the page plays the video from its path relative to the report.",
    ),
    cache_features: Optional[Path] = typer.Option(
        None, "--cache-features", help="Keep the features of videos in this directory and reuse them on a rerun."
    ),
    min_score: Optional[float] = typer.Option(
        None, "--min-score", help="Drop segments scoring below this (0-1).",
        show_default=f"{ReadingConfig.min_score:g}; with --all 0.001"),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", help="Keep at most this many segments of each class per video (with --all: this many "
        "per video).", show_default=f"{ReadingConfig.per_class}; with --all the checkpoint's preset, 200 "
        "(THUMOS14) or 100 (ActivityNet)"),
    all_segments: bool = typer.Option(
        False, "--all", help="Keep the full ranked list that mAP needs (overlapping alternatives, scores down to "
        "0.001) instead of what is worth reading: for files given to stale evaluate."),
    fps: Optional[float] = typer.Option(
        None, "--fps", help="Frames per second sampled from videos.", show_default="the checkpoint's rate, else 4"
    ),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help="open_clip architecture (see stale models).",
        show_default="the checkpoint's, else ViT-B-16"
    ),
    clip_weights: str = ClipWeightsOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    batch_size: int = typer.Option(32, "--batch-size", help="Video frames per CLIP forward pass."),
    distractors: bool = typer.Option(
        True, "--distractors/--no-distractors", help="Score each snippet against 213 generic action names and a "
        "checkpoint's training names too, reporting only yours, so that a name is not given to every "
        "action in the video; --no-distractors: your names are all the actions there are."),
    scoring: str = typer.Option(
        "open", "--scoring", metavar="open|paper", help="STALE mode: open (names, distractors, frozen CLIP's reading "
        "fused in) | paper (the paper's softmax over your names and the background)."),
    prior_weight: Optional[float] = typer.Option(
        None, "--prior-weight", help="STALE mode, open scoring: share of frozen CLIP's own reading of the names in "
        "the class posterior, 0-1 (0: the trained classifier alone).", show_default="0.5"),
    new_names: str = typer.Option(
        "both", "--new-names", metavar="both|clip|foreground|stale", help="STALE mode: names the checkpoint was not "
        "trained on are read by frozen CLIP alone (clip, as the training-free mode), by frozen CLIP for which name "
        "and the model for where (foreground: when the model's foreground carries to new classes), by either of "
        "the two, frozen CLIP's reading weighed by the checkpoint's context foreground (both), or by the trained "
        "model (stale). Videos that one action fills (trimmed clips) read new names better with clip."),
    progress: bool = ProgressOption,
) -> None:
    """Detect the named actions in each input and write or print the segments (seconds, label, score).

    Bad inputs are reported and skipped; the command exits with status 1 at the end if any failed, keeping the
    outputs of the others.

    Example: stale detect match.mp4 --classes "high jump,pole vault" -o match.srt
    """
    with user_errors():
        from stale_cli.cli.batch import BatchOutputs, DetectBatch
        from stale_cli.cli.extract import _collect  # one bad INPUT is reported, the others still run
        from stale_cli.cli.table import print_table
        from stale_cli.defaults import DEFAULT_FEATURE_FPS
        from stale_cli.detection.detect import DetectSettings
        from stale_cli.detection.outputs import resolve_format
        from stale_cli.report.plot import require_matplotlib
        from stale_cli.sidecar import MAX_FEATURE_FPS, MIN_FEATURE_FPS

        names = read_class_names(classes, classes_file)
        check_range("--fps", fps, MIN_FEATURE_FPS, MAX_FEATURE_FPS)
        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        check_range("--top-k", top_k, 1, MAX_COUNT)
        check_range("--min-score", min_score, 0.0, 1.0)
        check_range("--prior-weight", prior_weight, 0.0, 1.0)
        if plot is not None:
            require_matplotlib()
        to_stdout = output is not None and str(output) == "-"
        out_format = resolve_format(None if to_stdout else output, fmt)

        list_files: list = []
        paths, bad_inputs = _collect(inputs, kinds=("video", "features"), lists=list_files,
                                     nothing="no videos or feature files to detect in")
        reading = None  # --all: the ranked list as detection makes it; --min-score and --top-k act on it
        if not all_segments:
            reading = ReadingConfig()
            reading = dataclasses.replace(reading, min_score=reading.min_score if min_score is None else min_score,
                                          per_class=reading.per_class if top_k is None else top_k)
            min_score = top_k = None
        settings = DetectSettings(
            classes=names, mode=mode, checkpoint=checkpoint, clip_model=clip_model, clip_weights=clip_weights,
            fps=fps, min_score=min_score, top_k=top_k, batch_size=batch_size, cache_features=cache_features,
            reading=reading,
            precision=precision, distractors=distractors, scoring=scoring, prior_weight=prior_weight,
            new_names=new_names,
        )
        reads = [(classes_file, f"the classes file {classes_file}")]
        reads += [(list_file, f"the list file {list_file}") for list_file in list_files]
        batch = DetectBatch(settings, paths, BatchOutputs(output, out_format, plot, html), reads=reads,
                            console=stdout, warn=warning, note=note,  # every output checked before any model loads
                            show=lambda video: print_table(video, stdout))
        detector = batch.load(resolve_device(device))
        bar = _Progress(batch.paths, detector.fps or DEFAULT_FEATURE_FPS) if show_progress(progress) else None

        try:
            result = batch.run(on_start=bar.start if bar is not None else lambda path, video_id: None,
                               progress=bar.frames if bar is not None else None,
                               on_done=bar.done if bar is not None else lambda: None,
                               on_error=lambda failure: error(failure.message),
                               on_end=bar.close if bar is not None else lambda: None)
        finally:
            if bar is not None:
                bar.close()
        for path in result.written:
            wrote(path)
        if result.busy:
            holders = ", ".join(sorted({holder for _, holder in result.busy}))
            warning(f"{len(result.busy)} video(s) left to another run that is detecting them ({holders}); it "
                    "writes them when it ends")
        info(f"{result.mode} mode: {result.done} video(s) done, {result.resumed} resumed from an earlier run, "
             f"{len(result.failures) + len(bad_inputs)} failed")
        failed = bad_inputs + [str(f.path) for f in result.failures]
        if failed:
            fail_batch(failed, len(paths) + len(bad_inputs))
