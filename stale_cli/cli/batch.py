"""A batch of ``stale detect`` in the library: inputs -> video ids -> every output checked against the inputs ->
the detector -> its journal (a rerun resumes) -> each video written as it finishes.

:class:`DetectBatch` plans the batch and refuses a bad output before any model loads; :meth:`DetectBatch.load`
loads the detector; :meth:`DetectBatch.run` detects and writes, and returns what happened. The command parses
its options, builds one, calls it and prints the result; progress display is the caller's, through the hooks.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from stale_cli.detection.detect import DetectSettings, Detector, Failure, detect_batch
from stale_cli.detection.detections import VideoDetections
from stale_cli.detection.outputs import ResultWriter, output_is_directory
from stale_cli.detection.resume import DetectJournal, assign_ids, finished_outputs
from stale_cli.fileio import check_writable, missing_dirs, remove_empty_dirs
from stale_cli.guard import OutputGuard
from stale_cli.inputs import one_per_video
from stale_cli.report.plot import check_plot_format, plot_detections, plot_paths
from stale_cli.report.report import ReportWriter
from stale_cli.video_ids import input_id, video_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutputs:
    """Where a batch's results go (see :class:`~stale_cli.detection.outputs.ResultWriter` for ``output``)."""

    output: Optional[str | Path] = None  # a file, a directory, "-" (stdout), or None: a table per video
    fmt: str = "json"  # json | csv | srt
    plot: Optional[Path] = None  # score plots: this file (one video) or <stem>_<video_id><suffix> beside it
    html: Optional[Path] = None  # the HTML report: one file, or a directory of pages


@dataclass
class BatchResult:
    mode: str  # the mode that ran (stale | clip)
    written: list[Path]  # every file written, each once
    failures: list[Failure]
    done: int  # videos detected by this run
    resumed: int  # videos taken from an earlier run's journal
    busy: list = field(default_factory=list)  # [(input, holder)] left to another run detecting them


class DetectBatch:
    """One batch: ``inputs`` (video and feature files, in order), detected with ``settings``, written to
    ``outputs``. ``reads``: other files the run reads, as (path or None, description), which no output may
    replace (a classes file, list files). ``show``: what shows a video's detections when there is no output file
    (the CLI's table); ``console``: whose file ``--output -`` writes to; ``warn`` and ``note``: lines for the user
    (a renamed video id, an input given twice)."""

    def __init__(self, settings: DetectSettings, inputs: Sequence[Path], outputs: BatchOutputs,
                 reads: Sequence[tuple[Optional[Path], str]] = (), console=None,
                 warn: Callable[[str], None] = log.warning, note: Callable[[str], None] = log.info,
                 show: Optional[Callable[[VideoDetections], None]] = None):
        self.settings, self.outputs, self.reads, self.console, self.warn = settings, outputs, list(reads), console, warn
        self.show = show
        self.inputs = list(inputs)  # all stay inputs, also a video detected from its features
        self.paths = one_per_video(self.inputs, note)
        self.ids = video_ids(self.paths)
        for path, vid in zip(self.paths, self.ids):
            if vid != input_id(path):
                warn(f"{path}: another input has the same name; its detections are named {vid}")
        # Where results go, checked now; the writer itself is made once the run's metadata is known (load). Missing
        # folders are made by the first write, and removed again at the end when no input reached them.
        folders = [t if output_is_directory(t) else Path(t).parent for t in (outputs.output, outputs.html)
                   if t is not None]
        folders += [Path(outputs.plot).parent] if outputs.plot is not None else []
        self._made = [d for folder in folders if str(folder) != "-" for d in missing_dirs(folder)]
        self._targets = ResultWriter(outputs.output, outputs.fmt, {}, num_inputs=len(self.paths))
        self._check(settings.checkpoint)
        if outputs.plot is not None:
            check_plot_format(outputs.plot)  # after the clobber checks: writing over an input is the graver mistake
        if settings.cache_features is not None and self.need_video:  # before any video is decoded
            check_writable(Path(settings.cache_features), f"--cache-features {settings.cache_features}")
        self.detector: Optional[Detector] = None
        self.journal: Optional[DetectJournal] = None

    @property
    def need_video(self) -> bool:
        return any(p.suffix.lower() != ".npy" for p in self.paths)

    def _check(self, checkpoint: Optional[Path]) -> None:
        """The batch's outputs (as its ids name them now) against its inputs and each other: before any work."""
        guard = OutputGuard()
        guard.inputs(self.inputs)
        for path, what in self.reads:
            guard.input(path, what)
        guard.input(checkpoint, f"the checkpoint {checkpoint}")
        guard.input_if_file(self.settings.clip_weights, f"the CLIP weights {self.settings.clip_weights}")
        cache = self.settings.cache_features
        if cache is not None:
            for path, vid in zip(self.paths, self.ids):
                if path.suffix.lower() != ".npy":
                    for ext, what in ((".npy", "file"), (".json", "sidecar")):
                        guard.output(Path(cache) / f"{vid}{ext}", "--cache-features",
                                     f"a cached feature {what} of {path.name}", features=True)
        for vid in self.ids:
            if self._targets.path_of(vid) is not None:
                guard.output(self._targets.path_of(vid), "--output", "the detections file")
        for path in (plot_paths(self.outputs.plot, self.ids).values() if self.outputs.plot is not None else ()):
            guard.output(path, "--plot", "a plot")
        for path in (ReportWriter.planned(self.outputs.html, self.ids) if self.outputs.html is not None else ()):
            guard.output(path, "--html", "the HTML report")

    def load(self, device) -> Detector:
        """Load the detector on ``device`` (CLIP's precision resolved for it here, once), open the journal of an
        earlier run of the same batch, and check the outputs again (the checkpoint found in weights/, ids the
        journal renamed)."""
        from stale_cli.features.clip_backbone import resolve_precision

        settings = dataclasses.replace(self.settings, precision=resolve_precision(self.settings.precision, device))
        self.detector = Detector(settings, device=device, need_video=self.need_video)
        self.journal = DetectJournal.for_writer(self._targets, self.detector.run_key())
        if self.journal is not None:
            self.journal.curves = self.outputs.html is not None  # the report draws them, also for resumed videos
        if self.journal is not None and self._targets.directory is not None:
            self.ids = assign_ids(self.journal, self.paths, self.ids, lambda v: self._targets.path_of(v).is_file(),
                                  self.warn)
        self._check(self.detector.checkpoint)
        return self.detector

    def run(self, on_start: Callable[[Path, str], None] = lambda path, video_id: None,
            progress: Optional[Callable[[int], None]] = None, on_done: Callable[[], None] = lambda: None,
            on_error: Callable[[Failure], None] = lambda failure: None,
            on_end: Callable[[], None] = lambda: None) -> BatchResult:
        """Detect every input (after :meth:`load`) and write each result as it finishes; a failed input is
        reported to ``on_error`` and the batch goes on. ``on_start(path, video_id)`` before an input is detected,
        ``progress(n)`` as its frames are encoded, ``on_done()`` when it is finished or failed, ``on_end()`` when
        detection ends (also when interrupted), before the outputs that are written at the end (a progress
        display goes first)."""
        assert self.detector is not None, "load() first"
        detector, journal, outputs = self.detector, self.journal, self.outputs
        writer = ResultWriter(outputs.output, outputs.fmt, detector.metadata(), console=self.console,
                              num_inputs=len(self.paths), order=self.ids, show=self.show)
        report = ReportWriter(outputs.html, detector.metadata()) if outputs.html is not None else None
        plots = plot_paths(outputs.plot, self.ids) if outputs.plot is not None else {}
        plotted: list[Path] = []

        def finished(video: VideoDetections) -> None:
            on_done()
            writer.add(video)
            if report is not None:
                report.add(video)  # a video resumed from the journal has segments but no score curves
            if outputs.plot is not None and not video.extra.get("resumed"):
                plot_detections(video, plots[video.video_id])
                plotted.append(plots[video.video_id])

        def failed(failure: Failure) -> None:
            on_done()
            on_error(failure)

        try:
            failures = detect_batch(detector, self.paths, finished, failed, ids=self.ids, journal=journal,
                                    needs=lambda v: [plots[v]] if outputs.plot is not None else [],
                                    progress=progress, on_start=on_start)
        finally:
            on_end()
            if journal is not None and writer.file is not None:  # videos other runs finished meanwhile
                for video in finished_outputs(journal, self.paths, self.ids, writer.ids):
                    writer.add(video)
                    if report is not None:
                        report.add(video)
            writer.close()
            if report is not None:
                report.close()
            remove_empty_dirs(self._made)  # folders made for outputs no input reached (lock files come and go there)
        resumed = journal.resumed if journal is not None else 0
        busy = journal.busy if journal is not None else []
        return BatchResult(
            mode=detector.mode, written=writer.written + plotted + (report.written if report is not None else []),
            failures=failures, done=len(self.paths) - len(failures) - resumed - len(busy), resumed=resumed,
            busy=busy)
