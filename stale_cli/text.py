"""User text on its way out: names that are not UTF-8, and control characters that would drive a terminal.

A file name that is not valid UTF-8 (``caf\\xe9.mp4`` written in Latin-1) reaches Python as a string with
surrogate escapes, which no UTF-8 file or terminal can take: :func:`unicode_name` writes those bytes as ``\\xNN``,
and video ids are made from it, so every output (CSV, JSON, SRT, HTML, plots, journals) holds valid text.
:func:`terminal_text` also escapes control characters (ESC, the C1 range), so a label, class or file name cannot
retitle or reprogram the terminal it is printed on.
"""

from __future__ import annotations

# C0 controls but tab and newline, DEL and the C1 controls (0x9b is a one-character CSI) -> \xNN
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}


def unicode_name(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) written as ``\\xNN``."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON's "\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def terminal_text(text: str) -> str:
    """``text`` as it may be printed: :func:`unicode_name`, and control characters other than tab and newline
    written as ``\\xNN``."""
    return unicode_name(text).translate(_CONTROLS)


def number_text(x) -> str:
    """A number as a person writes it: ``100000000`` (not ``1e+08``), ``1048576``, ``0.25``, ``1e-300``, ``nan``."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return repr(x)
    if isinstance(x, int):
        return str(x)
    if x == x and abs(x) < 1e16 and x.is_integer():
        return str(int(x))
    return repr(x)
