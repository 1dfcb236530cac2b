"""The project's error types.

The library raises a subclass of :class:`StaleError` for anything a user can fix (a missing file, a corrupt
video, an unknown split, a checkpoint of another format). The text says what was expected and what to do;
the CLI prints it as one ``error:`` line and exits non-zero. Internal invariants use ``assert``.
"""


class StaleError(Exception):
    """Base class of every user-facing error."""


class InputError(StaleError):
    """A path, option or list given by the user is unusable."""


class DecodeError(InputError):
    """A video file cannot be opened or yields no frames."""


class WeightsError(StaleError):
    """CLIP weights cannot be found or loaded."""


class DataError(StaleError):
    """Annotations, feature files or class lists are malformed or do not fit together."""


class CheckpointError(StaleError):
    """A checkpoint is missing, of another format or version, or does not fit the features."""


class OutOfMemory(StaleError):
    """The machine's memory ran out on one input (a frame batch, an array it needed): that input fails, the batch
    goes on (a smaller input, or the next one, may fit)."""


class ResourceError(StaleError):
    """The machine ran out of something every further input needs too (GPU memory): the whole run stops."""


class StdoutError(ResourceError):
    """Standard output cannot take what is printed (a full disk behind a redirection, ``> /dev/full``): every
    further input would fail the same way, so the run stops."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a third-party library's may run on), else its type's name."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out: a MemoryError, torch's CPU allocator ("can't allocate memory", "not
    enough memory" on Windows) or CUDA's ("CUDA out of memory")."""
    if isinstance(e, MemoryError):
        return True
    text = str(e) if isinstance(e, RuntimeError) else ""
    return any(words in text for words in ("can't allocate memory", "not enough memory", "out of memory"))
