"""Command-line interface: ``stale <command>``. Each command lives in its own module of this package."""

from stale_cli.cli.app import app, main
from stale_cli.cli import extract, train, detect, evaluate, protocol, models  # noqa: F401  (registers the commands)

__all__ = ["app", "main"]
