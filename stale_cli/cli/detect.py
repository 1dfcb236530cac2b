"""``stale detect``: when does each named action happen? Segments in seconds, with a label and a score."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from stale_cli.cli.app import (
    ClipWeightsOption,
    DeviceOption,
    PrecisionOption,
    ProgressOption,
    MAX_BATCH,
    MAX_COUNT,
    app,
    check_range,
    error,
    fail_batch,
    info,
    resolve_device,
    show_progress,
    stderr,
    stdout,
    user_errors,
    warning,
    wrote,
)


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

        from stale_cli.text import terminal_text
        from stale_cli.video import num_samples, probe_header

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


@app.command("detect")
def detect(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Video files, feature files (.npy with their .json sidecar), directories (searched recursively) and "
        "@list.txt files.",
    ),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help='Action names, comma-separated: "high jump,pole vault".'),
    classes_file: Optional[Path] = typer.Option(None, "--classes-file", help="Action names, one per line (# comments)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="A trained STALE checkpoint (stale train). Default: the one checkpoint in weights/, "
        "else the training-free mode.",
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="stale | clip: force the trained model or the training-free CLIP similarity baseline."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="A file (all videos), a directory (one <video_id>.<ext> per video) or - "
        "(stdout). Default: a table per video on stdout. A rerun resumes; concurrent runs share the work.",
    ),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="json | csv | srt. Default: from the --output extension, else json."
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
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop segments scoring below this (0-1)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep at most this many segments per video."),
    fps: Optional[float] = typer.Option(
        None, "--fps", help="Frames per second sampled from videos. Default: the checkpoint's rate, else 4."
    ),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help="open_clip architecture. Default: the checkpoint's, else ViT-B-16."
    ),
    clip_weights: str = ClipWeightsOption,
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    batch_size: int = typer.Option(32, "--batch-size", help="Video frames per CLIP forward pass."),
    distractors: bool = typer.Option(
        True, "--distractors/--no-distractors", help="Score each snippet against 213 generic action names and a "
        "checkpoint's training names too, reporting only yours (default), so that a name is not given to every "
        "action in the video; --no-distractors: your names are all the actions there are."),
    scoring: str = typer.Option(
        "open", "--scoring", help="STALE mode: open (default: names, distractors, frozen CLIP's reading fused in) | "
        "paper (the paper's softmax over your names and the background)."),
    prior_weight: Optional[float] = typer.Option(
        None, "--prior-weight", help="STALE mode, open scoring: share of frozen CLIP's own reading of the names in "
        "the class posterior, 0-1 (default 0.5; 0: the trained classifier alone)."),
    new_names: str = typer.Option(
        "clip", "--new-names", help="STALE mode: names the checkpoint was not trained on are scored by frozen CLIP "
        "(clip, default: the trained classifier does not carry to new names on our zero-shot benchmark) or by the "
        "trained model (stale)."),
    progress: bool = ProgressOption,
) -> None:
    """Detect the named actions in each input and write or print the segments (seconds, label, score).

    Bad inputs are reported and skipped; the command exits with status 1 at the end if any failed, keeping the
    outputs of the others.

    Example: stale detect match.mp4 --classes "high jump,pole vault" -o match.srt
    """
    with user_errors():
        from stale_cli.clip_backbone import resolve_precision
        from stale_cli.detect import DetectSettings, Detector, detect_batch
        from stale_cli.errors import InputError
        from stale_cli.fileio import MAX_FEATURE_FPS, MIN_FEATURE_FPS
        from stale_cli.outputs import (ResultWriter, output_is_directory, plot_detections, plot_paths,
                                       require_matplotlib, resolve_format)
        from stale_cli.vocab import parse_classes, read_classes_file

        if (classes is None) == (classes_file is None):
            raise InputError("give the action names with exactly one of --classes \"a,b\" or --classes-file FILE")
        names = parse_classes(classes) if classes is not None else read_classes_file(classes_file)
        check_range("--fps", fps, MIN_FEATURE_FPS, MAX_FEATURE_FPS)
        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        check_range("--top-k", top_k, 1, MAX_COUNT)
        check_range("--min-score", min_score, 0.0, 1.0)
        check_range("--prior-weight", prior_weight, 0.0, 1.0)
        if plot is not None:
            require_matplotlib()
        to_stdout = output is not None and str(output) == "-"
        out_format = resolve_format(None if to_stdout else output, fmt)

        from stale_cli.cli.extract import _collect  # one bad INPUT is reported, the others still run
        from stale_cli.extract import input_id, video_ids
        from stale_cli.guard import OutputGuard
        from stale_cli.inputs import one_per_video
        from stale_cli.report import ReportWriter
        from stale_cli.resume import DetectJournal, assign_ids, finished_outputs

        list_files: list = []
        paths, bad_inputs = _collect(inputs, kinds=("video", "features"), lists=list_files,
                                     nothing="no videos or feature files to detect in")
        collected = list(paths)  # all of them stay inputs, also a video detected from its features
        paths = one_per_video(paths, note)
        ids = video_ids(paths)
        for path, vid in zip(paths, ids):
            if vid != input_id(path):
                warning(f"{path}: another input has the same name; its detections are named {vid}")
        from stale_cli.fileio import missing_dirs, remove_empty_dirs

        folders = [t if output_is_directory(t) else Path(t).parent for t in (output, html) if t is not None]
        made = [d for folder in folders + ([Path(plot).parent] if plot is not None else []) if str(folder) != "-"
                for d in missing_dirs(folder)]
        writer = ResultWriter(output, out_format, {}, console=stdout, num_inputs=len(paths), order=ids)

        def check_outputs(checkpoint_path) -> None:
            """The outputs of the batch (as ids name them now) against its inputs and each other: before any work."""
            guard = OutputGuard()
            guard.inputs(collected)
            guard.input(classes_file, f"the classes file {classes_file}")
            for list_file in list_files:
                guard.input(list_file, f"the list file {list_file}")
            guard.input(checkpoint_path, f"the checkpoint {checkpoint_path}")
            guard.input_if_file(clip_weights, f"the CLIP weights {clip_weights}")
            if cache_features is not None:
                for path, vid in zip(paths, ids):
                    if path.suffix.lower() != ".npy":
                        for ext, what in ((".npy", "file"), (".json", "sidecar")):
                            guard.output(cache_features / f"{vid}{ext}", "--cache-features",
                                         f"a cached feature {what} of {path.name}", features=True)
            for vid in ids:
                if writer.path_of(vid) is not None:
                    guard.output(writer.path_of(vid), "--output", "the detections file")
            for path in (plot_paths(plot, ids).values() if plot is not None else ()):
                guard.output(path, "--plot", "a plot")
            for path in (ReportWriter.planned(html, ids) if html is not None else ()):
                guard.output(path, "--html", "the HTML report")

        check_outputs(checkpoint)
        if plot is not None:
            from stale_cli.outputs import check_plot_format

            check_plot_format(plot)  # after the clobber checks: writing over an input is the graver mistake
        need_video = any(p.suffix.lower() != ".npy" for p in paths)
        if cache_features is not None and need_video:
            from stale_cli.fileio import check_writable

            check_writable(cache_features, f"--cache-features {cache_features}")  # before any video is decoded
        settings = DetectSettings(
            classes=names, mode=mode, checkpoint=checkpoint, clip_model=clip_model, clip_weights=clip_weights,
            fps=fps, min_score=min_score, top_k=top_k, batch_size=batch_size, cache_features=cache_features,
            precision=precision, distractors=distractors, scoring=scoring, prior_weight=prior_weight,
            new_names=new_names,
        )
        dev = resolve_device(device)
        resolve_precision(precision, dev)  # a bad --precision is an error before any model loads
        detector = Detector(settings, device=dev, need_video=need_video)
        writer.meta = detector.metadata()
        journal = DetectJournal.for_writer(writer, detector.run_key())
        if journal is not None:
            journal.curves = html is not None  # the report draws them, also for videos a rerun resumes
        if journal is not None and writer.directory is not None:
            ids = assign_ids(journal, paths, ids, lambda v: writer.path_of(v).is_file(), warning)
            writer.order = {v: i for i, v in enumerate(ids)}
        check_outputs(detector.checkpoint)  # again: the checkpoint found in weights/, ids renamed by the journal
        plots = plot_paths(plot, ids) if plot is not None else {}
        plotted: list = []
        report = None
        if html is not None:
            report = ReportWriter(html, detector.metadata())

        def on_result(video) -> None:
            if bar is not None:
                bar.done()
            writer.add(video)
            if report is not None:
                report.add(video)  # a video resumed from the journal has segments but no score curves
            if plot is not None and not video.extra.get("resumed"):
                plot_detections(video, names, plots[video.video_id])
                plotted.append(plots[video.video_id])

        def on_error(failure) -> None:
            if bar is not None:
                bar.done()
            error(failure.message)

        plotted: list = []
        bar = None
        if show_progress(progress):
            from stale_cli.defaults import DEFAULT_FEATURE_FPS

            bar = _Progress(paths, detector.fps or DEFAULT_FEATURE_FPS)
        try:
            failures = detect_batch(detector, paths, on_result, on_error, ids=ids, journal=journal,
                                    needs=lambda v: [plots[v]] if plot is not None else [],
                                    progress=bar.frames if bar is not None else None,
                                    on_start=bar.start if bar is not None else lambda path, video_id: None)
        finally:
            if bar is not None:
                bar.close()
            if journal is not None and writer.file is not None:  # videos other runs finished meanwhile
                for video in finished_outputs(journal, paths, ids, writer.ids):
                    writer.add(video)
                    if report is not None:
                        report.add(video)
            writer.close()
            if report is not None:
                report.close()
            remove_empty_dirs(made)  # folders made for outputs no input reached (lock files come and go there)
        for path in writer.written + plotted + (report.written if report is not None else []):
            wrote(path)
        resumed = journal.resumed if journal is not None else 0
        busy = journal.busy if journal is not None else []
        if busy:
            holders = ", ".join(sorted({holder for _, holder in busy}))
            warning(f"{len(busy)} video(s) left to another run that is detecting them ({holders}); it writes "
                    "them when it ends")
        done = len(paths) - len(failures) - resumed - len(busy)
        info(f"{detector.mode} mode: {done} video(s) done, {resumed} resumed from an earlier run, "
             f"{len(failures) + len(bad_inputs)} failed")
        failed = bad_inputs + [str(f.path) for f in failures]
        if failed:
            fail_batch(failed, len(paths) + len(bad_inputs))
