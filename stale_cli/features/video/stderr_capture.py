"""Capture of file descriptor 2 while decord runs, its C++ log lines sent to the debug log."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger(__name__)

# decord's C++ log lines ("[12:00:00] /github/workspace/src/video/video_reader.cc:83: ERROR opening: ...") go
# straight to file descriptor 2, past Python and decord.logging; our own error line says the same thing.
_DECORD_LOG_LINE = re.compile(rb"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: ")
_fd2_lock = threading.Lock()
_fd2_capture: list = []  # one temporary file, made on first use and reused (creating one per call costs ~0.3 ms)


@contextlib.contextmanager
def decord_log_to_debug() -> Iterator[None]:
    """Send what is written to fd 2 meanwhile to a temporary file; then log decord's lines at debug level and pass
    everything else (another thread's progress bar or log line) on to stderr."""
    fd2 = 2  # where C++ writes, whatever Python's sys.stderr is
    with _fd2_lock:
        if not _fd2_capture:
            _fd2_capture.append(tempfile.TemporaryFile())
        captured = _fd2_capture[0]
        captured.seek(0)
        captured.truncate()
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        saved = os.dup(fd2)
        os.dup2(captured.fileno(), fd2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, fd2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().splitlines(keepends=True):
                if _DECORD_LOG_LINE.match(line):
                    log.debug("decord: %s", line.decode("utf-8", "replace").rstrip())
                else:
                    os.write(fd2, line)
