"""User text made safe to print and write (stale_cli/text.py)."""

from __future__ import annotations

from feature_files import LATIN1  # tests/ is on sys.path (rootdir conftest)


def test_terminal_text_escapes_controls_and_undecodable_bytes():
    from stale_cli.text import terminal_text, unicode_name

    assert terminal_text("a\x1b[2Jb\x9b1m\tc\nd\x7f") == "a\\x1b[2Jb\\x9b1m\tc\nd\\x7f"
    assert unicode_name(LATIN1) == "caf\\xe9" and terminal_text(LATIN1) == "caf\\xe9"
    assert unicode_name("caf\u00e9 \ud800") == "caf\u00e9 \\ud800"  # a lone surrogate from JSON
    assert terminal_text(terminal_text("\x1b")) == "\\x1b"
