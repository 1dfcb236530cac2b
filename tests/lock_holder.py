"""Another run holding a lock (stale_cli/locks.py): a real second process, as a concurrent `stale` run would be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from stale_cli.locks import OutputLock
lock = OutputLock({target!r}).acquire()
print("locked" if lock else "busy", flush=True)
time.sleep(60)
"""


def hold_lock(target: Path) -> subprocess.Popen:
    """Another process that takes ``target``'s lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
