"""The Typer application and what every command shares: error handling, logging, common options.

Only the ``stale_cli.cli`` package knows about Typer. Commands parse their options, call the library and print;
a :class:`~stale_cli.errors.StaleError` becomes one ``error:`` line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.segment import Segment
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from stale_cli import CLIP_WEIGHTS_ENV, __version__
from stale_cli.errors import StaleError
from stale_cli.text import number_text, terminal_text

# click's exceptions, wherever this Typer takes click from (its own vendored copy, or the click package)
_click_errors = sys.modules[typer.BadParameter.__module__]

# Exit status of a usage error (an unknown option, a missing argument): 2, as click, argparse and getopt tools use.
STATUS_USAGE = 2


class _Group(TyperGroup):
    """The ``stale`` command group: a usage error is one ``error:`` line (status 2) instead of Typer's box, and
    the counting ``-v`` is shown in ``-h`` as ``-v, -vv`` rather than with a type label."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit as e:
            if e.code == 1 and _asks_help(args) and _stdout_gone():
                sys.exit(0)  # `stale --help | head -1`: the reader had what it wanted (rich ends with status 1)
            raise
        except _click_errors.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # `stale` alone: the help
                text = e.ctx.get_help()  # Typer's rich help prints itself and returns ""
                if text:
                    print(text)
                sys.exit(e.exit_code)
            message = e.format_message()
            message = message[:1].lower() + message[1:]
            where = e.ctx.command_path if e.ctx is not None else "stale"
            error(f"{message.rstrip('.')} (see {where} -h)")
            sys.exit(STATUS_USAGE)
        except _click_errors.ClickException as e:  # a bad file argument and the like: still one line
            error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort as e:
            if isinstance(e.__cause__, KeyboardInterrupt):  # Ctrl-C while the options were read
                error("interrupted")
                sys.exit(STATUS_INTERRUPTED)
            error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            _tidy_help(param)
        return params


# Old option names that still work, so that scripts keep running, but are left out of -h: extract-features and
# train called their --output "--out" before every command that writes a file took --output/-o.
HIDDEN_ALIASES = frozenset({"--out"})


class Command(TyperCommand):
    """A command whose options look alike in -h (:func:`_tidy_help`) and whose old option names
    (HIDDEN_ALIASES) are accepted but not shown."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            _tidy_help(param)  # also -h itself, which click adds here
        return params

    def shell_complete(self, ctx, incomplete):
        return [item for item in super().shell_complete(ctx, incomplete) if item.value not in HIDDEN_ALIASES]

    def format_help(self, ctx, formatter):
        renamed = [(param, param.opts) for param in self.params if HIDDEN_ALIASES & set(param.opts)]
        for param, opts in renamed:
            param.opts = [o for o in opts if o not in HIDDEN_ALIASES]
        try:
            return super().format_help(ctx, formatter)
        finally:
            for param, opts in renamed:
                param.opts = opts


# Type labels in -h: the words click users know, instead of Typer's "<str>", "<list[str]>", "<bool>".
_TYPE_LABELS = {"<str>": "TEXT", "<path>": "PATH", "<float>": "NUMBER", "<int>": "INTEGER"}


def _tidy_help(param) -> None:
    """One look for every option in -h: a flag or a counter shows no type label (it takes no value), an argument
    its own name only (``INPUT...``), other options a readable label (TEXT, PATH, NUMBER, INTEGER, or their own
    metavar); every default is shown as ``[default: X]``, also a default described in words
    (``show_default="the checkpoint's, else 4"``), which Typer would put in parentheses."""
    takes_no_value = getattr(param, "is_flag", False) or getattr(param, "count", False)
    if takes_no_value or (param.param_type_name == "argument" and param.metavar is not None):
        param.display_type_rich = lambda ctx: None
    elif param.metavar is None and hasattr(param, "display_type"):
        typer_label = param.display_type
        param.display_type_rich = lambda ctx: _TYPE_LABELS.get(typer_label(ctx), typer_label(ctx))
    shown = [o for o in param.opts if o not in HIDDEN_ALIASES]
    if len(shown) < len(param.opts):  # "missing option '--output' / '-o'", without the old name
        param.get_error_hint = lambda ctx=None: " / ".join(f"'{o}'" for o in shown)
    if isinstance(param.show_default, str):
        words = param.show_default
        param._get_default_string = lambda **kwargs: words


def _asks_help(args) -> bool:
    args = sys.argv[1:] if args is None else list(args)
    args = args[: args.index("--")] if "--" in args else args
    return "-h" in args or "--help" in args


def _stdout_gone() -> bool:
    """Whether stdout now goes to the null device: what rich does when its reader went away (a broken pipe)."""
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):
        return False


app = typer.Typer(
    cls=_Group,
    name="stale",
    help="Zero-shot temporal action detection (STALE, ECCV 2022): when does each named action happen in a video?",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATUS_BROKEN_PIPE = 128 + 13  # SIGPIPE: the reader of stdout went away (`stale ... | head -1`)


class _Console(Console):
    def _render_buffer(self, buffer) -> str:
        """User text (file, class and label names) printed escaped: control characters as ``\\xNN``, so a name
        cannot drive the terminal, and bytes of file names that are not UTF-8 as ``\\xNN``, which any stream
        takes. rich's own control segments (cursor moves) pass untouched."""
        return super()._render_buffer(
            Segment(terminal_text(text), style, control) if not control else Segment(text, style, control)
            for text, style, control in buffer)

    def on_broken_pipe(self) -> None:
        """Rich's default ends the run with status 1, the status of a user error; end it as SIGPIPE would."""
        self.quiet = True
        _quiet_broken_pipe()
        raise SystemExit(STATUS_BROKEN_PIPE)

    def _check_buffer(self) -> None:
        """A stream that cannot take the text (a full disk behind ``> out.txt``, ``> /dev/full``) is one
        StdoutError line, not a traceback; rich handles a broken pipe itself."""
        try:
            super()._check_buffer()
        except BrokenPipeError:
            raise
        except OSError as e:
            from stale_cli.errors import StdoutError

            del self._buffer[:]
            name = "stderr" if self.stderr else "stdout"
            raise StdoutError(f"cannot write to {name}: {e.strerror or e}; free some space or redirect it "
                              "elsewhere") from e


# Results go to stdout, logs and progress to stderr, so `stale ... > out.json` stays clean. Markup is off: file
# names, class names and labels are user text (`race [final].npy`), so styles are given as Text objects only.
stdout = _Console(soft_wrap=True, markup=False, highlight=False)
stderr = _Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

def OutputOption(help: str, required: bool = False, metavar: str = "PATH"):
    """``--output/-o``, the one name of what a command writes (``--out`` still works, unshown)."""
    return typer.Option(... if required else None, "--output", "-o", *sorted(HIDDEN_ALIASES), metavar=metavar,
                        help=help)


ClassesOption = typer.Option(
    None, "--classes", "-c", metavar='"A,B"', help='Action names, comma-separated: "high jump,pole vault".')
ClassesFileOption = typer.Option(
    None, "--classes-file", metavar="FILE", help="Action names, one per line (# comments).")


def read_class_names(classes: Optional[str], classes_file, required: bool = True) -> Optional[list]:
    """The names of ``--classes "a,b"`` or ``--classes-file F`` (at most one of them; one if ``required``)."""
    from stale_cli.errors import InputError
    from stale_cli.vocab import parse_classes, read_classes_file

    if classes is not None and classes_file is not None:
        raise InputError('give the action names with either --classes "a,b" or --classes-file FILE, not both')
    if classes is not None:
        return parse_classes(classes)
    if classes_file is not None:
        return read_classes_file(classes_file)
    if required:
        raise InputError('give the action names with --classes "a,b" or --classes-file FILE')
    return None


ClipModelOption = typer.Option(
    "ViT-B-16", "--clip-model", help="open_clip architecture of the frame/text encoder."
)
ClipWeightsOption = typer.Option(
    "openai",
    "--clip-weights",
    envvar=CLIP_WEIGHTS_ENV,
    help="open_clip pretrained tag (openai: OpenAI's weights, downloaded once and cached; see stale models) or a "
    f"path to a local weights file. Also read from ${CLIP_WEIGHTS_ENV}.",
)
DeviceOption = typer.Option(
    "auto", "--device", metavar="auto|cpu|cuda[:N]|mps",
    help="Where to run; auto: cuda when available, then Apple's mps, then cpu."
)
PrecisionOption = typer.Option(
    "auto", "--precision", metavar="auto|fp32|bf16|fp16", help="dtype CLIP's weights are cast to; auto: fp16 on "
    "CUDA, bf16 on CPUs with native bf16 (AMX / AVX512-BF16), else fp32.",
)
ProgressOption = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")


QUIET = False  # -q: only error lines on stderr (results still go to stdout)


def error(message: str) -> None:
    stderr.print(Text.assemble(("error:", "bold red"), " ", terminal_text(str(message))))


def warning(message: str) -> None:
    if not QUIET:
        stderr.print(Text.assemble(("warning:", "yellow"), " ", terminal_text(str(message))))


def info(message: str) -> None:
    """A line for the person at the terminal (a summary, where outputs went) on stderr; none under ``-q``."""
    if not QUIET:
        stderr.print(terminal_text(str(message)), highlight=False)


def wrote(path, what: str = "") -> None:
    """Name a file (or folder) a command wrote, once, on stderr: ``wrote PATH`` (``-q``: nothing)."""
    info(f"wrote {what}{' to ' if what else ''}{path}")


def fail_batch(failed: list, inputs: int) -> None:
    """End a batch of which the inputs ``failed`` (paths, each already reported with its own error line) with
    status 1: a line counting them and the list, under ``-q`` too; a run of one input has said it all already."""
    if inputs > 1:
        error(f"{len(failed)} input(s) failed:")
        for path in failed:
            stderr.print(f"  {path}", highlight=False)  # part of the error, shown under -q too
    raise typer.Exit(1)


def show_progress(flag: bool) -> bool:
    """Whether to draw progress bars: asked for (``--progress``, the default), not ``-q``, and stderr a terminal
    (bars in a batch log or a pipe are only noise)."""
    if not flag or QUIET:
        return False
    try:
        return stderr.file.isatty()
    except (AttributeError, ValueError):
        return False


class Terminated(BaseException):
    """SIGTERM (a batch scheduler's preemption, `kill`), raised in the main thread as Ctrl-C raises KeyboardInterrupt.

    Not a KeyboardInterrupt: Typer would turn one raised outside a command into a silent status 130.
    """


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


# Exit status of a run ended by a signal: 128 + its number, as the shell reports a process the signal killed.
STATUS_INTERRUPTED = 128 + signal.SIGINT
STATUS_TERMINATED = 128 + signal.SIGTERM


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a StaleError, Ctrl-C, SIGTERM (or an operation Apple's GPU lacks) into one line on stderr and a
    non-zero exit."""
    from stale_cli.errors import StdoutError

    try:
        yield
        _flush_stdout()  # what Python buffered: a full stdout fails here, inside the command, not at exit
    except StdoutError as e:
        _quiet_broken_pipe()  # the unwritable stdout is replaced, so Python's flush at exit does not complain
        stdout.quiet = True
        error(str(e))
        raise typer.Exit(1) from None
    except StaleError as e:
        error(str(e))
        raise typer.Exit(1) from None
    except NotImplementedError as e:
        if "MPS" not in str(e):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        error(f"PyTorch cannot run this on the Apple GPU ({first}); run it again with "
              "PYTORCH_ENABLE_MPS_FALLBACK=1 (that operation on the CPU) or with --device cpu")
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, Terminated) as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        error(f"{what}; finished outputs are kept, rerun the same command to resume")
        raise typer.Exit(STATUS_TERMINATED if isinstance(e, Terminated) else STATUS_INTERRUPTED) from None
    except BrokenPipeError:  # click would turn it into status 1, the status of a user error
        _quiet_broken_pipe()
        raise typer.Exit(STATUS_BROKEN_PIPE) from None


def _flush_stdout() -> None:
    """Flush stdout; one that cannot take what is buffered (a full disk, ``> /dev/full``) is a StdoutError."""
    from stale_cli.errors import StdoutError

    if stdout.quiet:
        return
    try:
        stdout.file.flush()
    except BrokenPipeError:
        raise
    except ValueError:  # closed (embedded use): nothing was left to write
        pass
    except OSError as e:
        raise StdoutError(f"cannot write to stdout: {e.strerror or e}; free some space or redirect it "
                          "elsewhere") from e


# Upper bounds of numeric options: far beyond any real use, low enough that no loop or allocation runs away.
MAX_BATCH = 1 << 16
MAX_COUNT = 1 << 20  # --top-k, --epochs
MAX_SEED = 2**32 - 1


def check_range(option: str, value, lo, hi, low_open: bool = False):
    """``value`` if it is a finite number in [lo, hi] ((lo, hi] with ``low_open``), else one InputError line.

    ``None`` (an option not given) passes through.
    """
    from stale_cli.errors import InputError

    if value is None:
        return None
    ok = math.isfinite(value) and (lo < value if low_open else lo <= value) and value <= hi
    if not ok:
        interval = f"{'(' if low_open else '['}{number_text(lo)}, {number_text(hi)}]"
        raise InputError(f"{option} must be a number in {interval}, got {number_text(value)}")
    return value


def resolve_device(name: str):
    """``auto | cpu | cuda[:N] | mps`` -> torch.device, chosen once here and passed down."""
    import torch

    from stale_cli.errors import InputError

    name = name.strip().lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError(f"--device {name!r}: expected cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps":
        if not has_mps:
            raise InputError("--device mps was asked for but PyTorch has no Apple GPU (MPS) here; use --device cpu")
        return torch.device("mps")
    raise InputError(f"--device must be auto, cpu, cuda or mps, not {name!r}")


def _setup_logging(verbose: int, quiet: bool) -> None:
    """stale's log: info by default, debug with ``-v``, errors only with ``-q``. Libraries (open_clip logs to
    the root logger): warnings by default, errors only with ``-q``, everything with ``-vv``."""
    from rich.logging import RichHandler

    global QUIET
    QUIET = quiet
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    ours = logging.getLogger("stale_cli")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(RichHandler(console=stderr, show_time=False, show_path=True, markup=False,
                                    rich_tracebacks=False))
    root.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.WARNING)
    if quiet:
        import warnings

        warnings.simplefilter("ignore")  # Python warnings of libraries (deprecations) are not errors


def _version(value: bool) -> None:
    if value:
        stdout.print(f"stale {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, show_default=False,
        help="More log output on stderr: -v stale's debug messages, -vv also those of the libraries it uses "
        "(open_clip, ...).",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only errors on stderr: no summaries, progress or 'wrote' lines (results "
        "still go to stdout).",
    ),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Zero-shot temporal action detection: segments in seconds, with labels and scores."""
    _setup_logging(verbose, quiet)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_broken_pipe() -> None:
    """stdout's reader is gone: end quietly, and keep Python from complaining again when it flushes at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    """The ``stale`` entry point: SIGTERM ends a run like Ctrl-C, a closed stdout ends it quietly."""
    with contextlib.suppress(ValueError):  # not the main thread (embedded): leave signals alone
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app()
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(STATUS_BROKEN_PIPE)
    except Terminated:  # outside a command (while parsing options, importing)
        error("terminated (SIGTERM)")
        sys.exit(STATUS_TERMINATED)
    except KeyboardInterrupt:  # pragma: no cover - Typer handles it
        error("interrupted")
        sys.exit(STATUS_INTERRUPTED)
