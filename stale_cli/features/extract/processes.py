"""The extraction pipeline with ``workers`` decoding processes (see :mod:`stale_cli.features.extract`), each on its own
video and its own pipe, all feeding the one encoder; results still come out in input order."""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import pickle
import sys
from pathlib import Path
from typing import Iterator

import torch

from stale_cli.errors import DecodeError, OutOfMemory
from stale_cli.features.clip_backbone import resize_and_crop
from stale_cli.features.extract.steps import VideoResult, _claim, _decode_items, _encode, _result

# With decoding processes: videos started ahead of the oldest unfinished one, per worker. Bounds the features
# held back for in-order output however many videos there are.
AHEAD_PER_WORKER = 2
WORKER_POLL_S = 0.5  # longest wait for a message from the decoding processes before handing out work again


def _decode_process(tasks, results, fps: float, transform, batch_size: int, decoder: str) -> None:
    """Body of a decoding process. ``tasks``/``results``: its own two pipe ends. For each (i, path) received,
    send ("chunk", i, uint8 array) ..., then ("done", i, VideoInfo) or ("error", i, StaleError); stop at None
    or when the encoder's end closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the encoder's to handle: it ends these processes
    torch.set_num_threads(1)  # the resize runs here; the encoder's process owns the cores' threads
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        i, path = task
        try:
            for kind, j, payload in _decode_items(i, path, fps, transform, batch_size, decoder):
                if kind == "chunk":
                    payload = payload.frames.numpy()  # (n, S, S, 3) uint8
                results.send((kind, j, payload))  # waits for the encoder
        except (BrokenPipeError, EOFError):  # the encoder's end is closed: nobody to decode for
            return


class _Decoders:
    """``workers`` decoding processes, each with its own task pipe and result pipe, given one video at a time.

    A pipe per process, not one shared queue: a process that dies mid-message (a crash in a decoder library)
    can corrupt or lock only its own pipe, and its death shows as end-of-file on it. A pipe holds little, so a
    process that runs ahead waits in ``send``: decoded frames waiting for the encoder stay bounded.
    """

    def __init__(self, workers: int, args: tuple):
        # forkserver (Linux): workers fork from a small server process, not from this one with its model and
        # threads; spawn elsewhere (macOS, Windows).
        self.ctx = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            self.ctx.set_forkserver_preload([__name__])  # torch, PyAV imported once in the server, not per worker
        self.args = args
        self.procs: dict = {}  # worker id -> (process, task sender, result receiver)
        self.holding: dict = {}  # worker id -> video index it decodes
        for wid in range(workers):
            self.start(wid)

    def start(self, wid: int) -> None:
        task_recv, task_send = self.ctx.Pipe(duplex=False)
        result_recv, result_send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_decode_process, args=(task_recv, result_send, *self.args), daemon=True,
                                name=f"stale-decode-{wid}")
        proc.start()
        task_recv.close()  # the child's ends: closed here, so the child's death reads as EOF
        result_send.close()
        self.procs[wid] = (proc, task_send, result_recv)
        self.holding.pop(wid, None)

    def idle(self) -> list:
        return [wid for wid in self.procs if wid not in self.holding]

    def give(self, wid: int, i: int, path: Path) -> None:
        self.holding[wid] = i
        self.procs[wid][1].send((i, str(path)))

    def receive(self, timeout: float) -> Iterator[tuple]:
        """(worker id, message or None if the process died) for each pipe with something to read."""
        readers = {proc_pipes[2]: wid for wid, proc_pipes in self.procs.items()}
        for conn in multiprocessing.connection.wait(list(readers), timeout=timeout):
            wid = readers[conn]
            try:
                yield wid, conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):  # died, maybe mid-message
                yield wid, None

    def replace(self, wid: int) -> tuple:
        """Restart a dead process: (the video index it held or None, its exit code)."""
        proc, task_send, result_recv = self.procs[wid]
        proc.join(timeout=5.0)
        held = self.holding.get(wid)
        task_send.close()
        result_recv.close()
        self.start(wid)
        return held, proc.exitcode

    def close(self) -> None:
        for proc, task_send, _ in self.procs.values():
            try:
                task_send.send(None)
            except OSError:
                pass
        for proc, task_send, result_recv in self.procs.values():
            result_recv.close()  # a process blocked in send gets a broken pipe and ends
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            task_send.close()


def _iter_features_processes(
    paths, clip, fps, batch_size, decoder, on_frames, workers, claim
) -> Iterator[VideoResult]:
    """iter_features with ``workers`` decoding processes (see the module docstring).

    Order: each idle process gets the next video in input order, at most ``AHEAD_PER_WORKER * workers`` past the
    oldest one not yet given back; finished ones wait until all before them are out. ``claim(i)`` is called just
    before video ``i`` is handed out (False: ``claimed=False``, not decoded). A decoder error fails that
    video only; a process that dies (a crash inside a decoder library) fails the video it had, and a new process
    takes its place.
    """
    paths = [Path(p) for p in paths]
    transform = functools.partial(resize_and_crop, size=clip.image_size, resize_mode=clip.resize_mode)
    pool = _Decoders(workers, (fps, transform, batch_size, decoder))
    rows: dict = {}  # video index -> encoded chunks so far
    failed: dict = {}  # video index -> OutOfMemory of a video whose frames did not fit
    finished: dict = {}  # video index -> VideoResult waiting for its turn
    sent, next_out, ahead = 0, 0, AHEAD_PER_WORKER * workers
    try:
        while True:
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1
            if next_out >= len(paths):
                return
            for wid in pool.idle():
                while sent < len(paths) and sent < next_out + ahead:
                    i, sent = sent, sent + 1
                    claimed, error = _claim(claim, i)
                    if not claimed:
                        finished[i] = VideoResult(i, paths[i], claimed=error is not None, error=error)
                        continue
                    rows[i] = []
                    pool.give(wid, i, paths[i])
                    break
            for wid, msg in pool.receive(WORKER_POLL_S):
                if msg is None:
                    i, code = pool.replace(wid)
                    if i is not None:
                        rows.pop(i, None)
                        finished[i] = VideoResult(i, paths[i], error=DecodeError(
                            f"{paths[i]}: the decoding process died (exit code {code}) on this file"))
                    continue
                kind, i, payload = msg
                if kind == "chunk":
                    if i in failed:  # the rest of a video that ran out of memory
                        continue
                    frames = torch.from_numpy(payload)
                    try:
                        rows[i].append(_encode(clip, frames, batch_size, paths[i]))  # (n, D)
                    except OutOfMemory as e:
                        failed[i] = e
                    if on_frames:
                        on_frames(frames.shape[0])
                    continue
                del pool.holding[wid]
                chunks = rows.pop(i)
                if kind == "error" or i in failed:
                    finished[i] = VideoResult(i, paths[i], error=failed.pop(i, payload))
                else:
                    finished[i] = _result(i, paths[i], chunks, payload, fps, clip)
    finally:
        pool.close()
