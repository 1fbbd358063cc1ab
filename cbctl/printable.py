"""Untrusted text made safe to show: the one sanitiser between data and a terminal.

Circuit names, error texts, remote endpoints' answers and state rows can hold anything. Shown
raw, an ESC sequence clears the screen, plants an OSC 8 link or sets the window title, and a
newline or carriage return forges table rows. `visible()` keeps printable text as it is and
writes every other character as an escape that can be read (`\\x1b`, `\\n`, `\\u202e`); rich
markup is never involved, because render.py passes the result as `Text`, not as markup.
"""

from __future__ import annotations

from typing import Final

__all__ = ["visible"]

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: object) -> str:
    """`text` (made a str) with every non-printable character written as a visible escape.

    Printable text (the usual case) is returned unchanged after one C-speed check.
    """
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else _escape(char) for char in value)
