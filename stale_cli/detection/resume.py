"""Resuming and sharing a ``stale detect`` batch: a journal of finished videos and a lock per video.

The journal is a hidden JSON Lines file beside the output (``.<name>.journal`` for ``--output FILE``,
``<dir>/.stale-detect.journal`` for a directory). Each finished video appends one line, flushed to disk, holding
its segments (full precision), the identity of its input (resolved path, size, mtime) and the run's settings, so:

- ``--output FILE`` costs one line per video while the batch runs and one write of the file at the end (not a
  rewrite of the whole file after every video); an interrupted batch loses nothing it finished;
- a rerun skips every video whose line matches its input as it is now and the same settings (as
  ``extract-features`` does); a half-written last line (a kill mid-write) is ignored;
- runs started at the same time on the same output take each video under a lock (:mod:`stale_cli.locks`) and
  so split the videos between them; each writes the output from all the lines in the journal when it ends.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from stale_cli.detection.detections import Segment, VideoDetections, curve_payload, curves_from_payload
from stale_cli.errors import InputError
from stale_cli.fileio import is_stream, source_identity
from stale_cli.locks import OutputLock

log = logging.getLogger(__name__)

DIRECTORY_JOURNAL = ".stale-detect.journal"


def _plain(obj):
    """``obj`` as JSON would give it back (tuples -> lists, ...), so settings compare equal across runs."""
    return json.loads(json.dumps(obj))


class DetectJournal:
    """Finished videos of ``run`` (a dict of the settings that decide the segments) recorded at ``path``.

    ``target(video_id)``: the output path a video's lock is taken on.
    """

    def __init__(self, path: Path, run: dict, target: Callable[[str], Path]):
        self.path = Path(path)
        self.run = _plain(run)
        self.target = target
        self.resumed = 0  # videos taken from the journal in this run
        # Record each video's score curves (compact, as the HTML report holds them) and resume only videos recorded
        # with them: set when the run writes a report, which draws them.
        self.curves = False
        self.busy: list = []  # [(input path, "pid N")] left to another run holding their lock
        self._records: dict[str, dict] = {}
        self._offset = 0  # bytes of the journal read so far

    @classmethod
    def for_writer(cls, writer, run: dict) -> Optional["DetectJournal"]:
        """The journal of a :class:`~stale_cli.detection.outputs.ResultWriter`'s output (None for tables, stdout, a FIFO
        or a device); locks are taken on each video's file (directory output) or on ``<file>.<video_id>`` beside the
        one file."""
        if writer.directory is not None:
            return cls(writer.directory / DIRECTORY_JOURNAL, run, target=writer.path_of)
        if writer.file is not None and not is_stream(writer.file):  # a FIFO or /dev/null: nothing to resume
            file = writer.file
            return cls(file.with_name(f".{file.name}.journal"), run, target=lambda v: file.with_name(f"{file.name}.{v}"))
        return None

    def records(self) -> dict[str, dict]:
        """The last complete record of each video id, whatever its run (callers compare ``run`` and ``input``).

        Reads only what was appended since the last call (by this run or another), so checking the journal before
        each video costs in total one read of it, not one per video.
        """
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            size = 0
        if size < self._offset:  # replaced or deleted since: start over
            self._offset, self._records = 0, {}
        if size == self._offset:
            return self._records
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except OSError as e:
            log.warning("%s: unreadable journal (%s); its videos are done again", self.path, e)
            return self._records
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write, then continued by a later run
            if isinstance(rec, dict) and isinstance(rec.get("video_id"), str):
                self._records[rec["video_id"]] = rec
        return self._records

    def finished(self, video_id: str, path: Path, records: Optional[dict] = None,
                 resuming: bool = True) -> Optional[VideoDetections]:
        """The detections of ``video_id`` if the journal holds them for ``path`` as it is now and this run, with
        their score curves where recorded. ``resuming``: for this run to skip the video, which with ``curves``
        needs them recorded (else it is detected again); a video another run finished is taken either way."""
        rec = (self.records() if records is None else records).get(video_id)
        if rec is None or rec.get("run") != self.run:
            return None
        try:
            if rec.get("input") != source_identity(path):
                return None
            classes = tuple(str(c) for c in self.run["classes"])  # the run's: the records name one of them
            row = {name: k for k, name in enumerate(classes)}
            segments = [Segment(str(s["label"]), float(s["start"]), float(s["end"]), float(s["score"]),
                                row[str(s["label"])]) for s in rec["segments"]]
            video = VideoDetections(video_id, str(rec["source"]), float(rec["duration"]), segments, classes=classes)
        except (OSError, KeyError, TypeError, ValueError):  # a record this run cannot read is detected again
            return None
        if self.curves:
            try:
                times, scores = curves_from_payload(rec["curves"])  # (T,), (T, K)
                if scores.shape[1] != len(classes):
                    raise ValueError(f"curves of {scores.shape[1]} classes, the run asks {len(classes)}")
                video.times, video.scores = times, scores
            except (KeyError, TypeError, ValueError):  # recorded by a run without --html, or damaged
                if resuming:
                    return None
        video.extra = {"mode": self.run.get("mode"), "resumed": True}
        return video

    def other_source(self, video_id: str, path: Path, records: dict) -> Optional[str]:
        """The input another run wrote ``video_id`` for, when it is not ``path`` (a name clash across runs)."""
        rec = records.get(video_id)
        theirs = (rec or {}).get("input", {}).get("source") if isinstance((rec or {}).get("input"), dict) else None
        return theirs if theirs and theirs != str(Path(path).resolve()) else None

    def claim(self, video_id: str, path: Path) -> Optional[OutputLock]:
        """The video's lock, or None (recorded in ``busy``) while another run holds it."""
        lock = OutputLock(self.target(video_id))
        if lock.acquire() is None:
            self.busy.append((path, lock.holder))
            return None
        return lock

    def append(self, video: VideoDetections, path: Path) -> None:
        """Record a finished video: one line, appended and flushed to disk before the call returns."""
        rec = {
            "video_id": video.video_id,
            "source": video.source,
            "duration": video.duration,
            "segments": [{"label": s.label, "start": s.start, "end": s.end, "score": s.score} for s in video.segments],
            "input": source_identity(path),
            "run": self.run,
        }
        if self.curves and video.times is not None and video.scores is not None:
            rec["curves"] = curve_payload(video.times, video.scores, video.scores.shape[1])
        line = (json.dumps(rec) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":  # a line cut by a killed run: do not continue it
                    line = b"\n" + line
                os.write(fd, line)  # one write of one line: concurrent runs' lines do not interleave
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e


def assign_ids(journal: DetectJournal, paths: Sequence[Path], ids: list[str], exists: Callable[[str], bool],
               warn: Callable[[str], None]) -> list[str]:
    """Ids for a directory output: an id whose file an earlier run wrote for another input moves to
    ``stem-<8 hex>``, as a name clash within a run does."""
    from stale_cli.video_ids import hashed_id

    records = journal.records()
    out = []
    for path, vid in zip(paths, ids):
        theirs = journal.other_source(vid, path, records)
        if theirs and exists(vid):
            new = hashed_id(path)
            warn(f"{path}: the output of {vid!r} holds another video's detections ({theirs}); writing this one as {new}")
            vid = new
        out.append(vid)
    return out


def finished_outputs(journal: DetectJournal, paths: Sequence[Path], ids: Sequence[str], have: set) -> list:
    """Detections of this batch's videos the journal holds beyond ``have`` (ids): those other runs finished."""
    records = journal.records()
    found = (journal.finished(v, p, records, resuming=False) for p, v in zip(paths, ids) if v not in have)
    return [v for v in found if v is not None]
