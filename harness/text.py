"""Text that comes from a file (class names, a labels file, a checkpoint's keys, a path)
made safe to print on a terminal.

A class name is data: ``"\\x1b[2J"`` in a labels file or a checkpoint's metadata must print
as the eight characters ``\\x1b[2J``, not clear the screen. :func:`printable` escapes every
control character (C0, DEL, C1, and the Unicode format characters that reorder or hide text,
such as U+202E RIGHT-TO-LEFT OVERRIDE) the way Python writes them in a string literal, and
leaves every other character, non-ASCII letters included, as it is. It imports nothing
from the project: any module may use it.
"""
from __future__ import annotations

import unicodedata

# categories never printed raw: Cc (C0, DEL, C1 controls), Cf (bidi overrides, zero-width),
# Zl / Zp (line and paragraph separators), Cs (lone surrogates), Co / Cn (private, unassigned)
_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text, limit: int = 0, backslashes: bool = True) -> str:
    """``text`` (any object, made ``str``) with control and invisible format characters
    escaped, so that printing it can neither move the cursor, recolour, clear the screen nor
    hide or reorder what follows; a backslash is doubled, so that every escape in the output
    stands for one character of the input (``backslashes=False`` leaves them: for a message
    whose names were escaped already). ``limit`` > 0 cuts the result to that many characters (with ``...``)."""
    text = str(text)
    if text.isprintable() and ("\\" not in text or not backslashes):   # the common case: nothing to escape
        out = text
    else:
        out = "".join(_escape(ch) if (ch in _SHORT and (backslashes or ch != "\\"))
                      or unicodedata.category(ch) in _UNSAFE else ch for ch in text)
    if limit > 0 and len(out) > limit:
        out = out[:max(0, limit - 3)] + "..."
    return out
