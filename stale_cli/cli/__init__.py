"""Command-line interface: ``stale <command>``. Each command lives in its own module of this package.

Importing the package imports Typer, rich and the commands (what ``stale`` needs first); Ctrl-C while it does, in
the first moments of a run, is one ``error:`` line and status 130, not a traceback of the import machinery.
"""

import sys

try:
    from stale_cli.cli.app import app, main
    from stale_cli.cli import extract, train, detect, evaluate, protocol, models  # noqa: F401  (registers the commands)
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(128 + 2) from None  # 128 + SIGINT, as stale_cli.cli.app reports an interrupted run

__all__ = ["app", "main"]
