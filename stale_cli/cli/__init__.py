"""Command-line interface: ``stale <command>``. Each command lives in its own module of this package.

Importing the package loads nothing heavy: :func:`main` (the ``stale`` entry point) imports Typer, rich and the
commands itself, so that Ctrl-C in the first moments of a run is one ``error:`` line, not a traceback of the import
machinery. ``from stale_cli.cli import app`` gives the Typer application with every command registered.
"""

import sys

STATUS_INTERRUPTED = 130  # 128 + SIGINT, as stale_cli.cli.app reports an interrupted run


def _load():
    from stale_cli.cli.app import app
    from stale_cli.cli import extract, train, detect, evaluate, protocol, models  # noqa: F401  (registers the commands)

    globals()["app"] = app  # importing the submodule `app` made the package's `app` that module
    return app


def __getattr__(name: str):
    if name == "app":
        return _load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The ``stale`` entry point (:func:`stale_cli.cli.app.main` once the commands are imported)."""
    try:
        _load()
        from stale_cli.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(STATUS_INTERRUPTED) from None
    run()


__all__ = ["app", "main"]
