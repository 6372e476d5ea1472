"""Text from outside, made safe for a terminal: one record stays one line.

Apart from :mod:`._print` so that the CLI's entry (:mod:`._main`) can escape an error
message without importing what the printers need (pydantic, the pipeline loader, the
site registry): ``lwfm-bus emit`` inside a job starts faster that way (issue #21).
:mod:`._print` re-exports both functions.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["shown", "shown_json"]

_SPECIAL = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NOT_PLAIN = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")  # runs of anything but printable ASCII other than backslash
_NOT_ASCII = re.compile(r"[^\x00-\x7e]+")  # in JSON text: DEL and beyond (json.dumps escapes the rest)


def _hidden(ch: str) -> bool:
    """Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned, line/paragraph separator."""
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


@lru_cache(maxsize=4096)
def _escaped(ch: str) -> str:
    if ch in _SPECIAL:
        return _SPECIAL[ch]
    if not _hidden(ch):
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@lru_cache(maxsize=4096)
def _json_escaped(ch: str) -> str:
    if not _hidden(ch):
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def shown(text: object) -> str:
    """``text`` (``str()`` of it) as it may go to a terminal: every invisible or controlling character escaped.

    Escaped, Python-style: C0 controls (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\x00``...), DEL (``\\x7f``),
    C1 controls (``\\x85``...), the line and paragraph separators (``\\u2028``, ``\\u2029``), format
    characters such as the bidi overrides and isolates (``\\u202e``, ``\\u2066``) and zero-width ones,
    surrogates, private-use and unassigned code points; and the backslash itself (``\\\\``), so the
    escaping can be read back unambiguously.  Everything else -- printable ASCII, spaces, letters
    of any script such as ``é`` or ``日本`` -- is kept as it is.  A printed value is thus always one line.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and "\\" not in s:  # the common case: nothing to do, no per-character work
        return s
    return _NOT_PLAIN.sub(lambda m: "".join(map(_escaped, m[0])), s)


def shown_json(doc: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) as it may go to a terminal, still valid JSON.

    JSON escapes C0 controls, quotes and backslashes itself; what :func:`shown` would escape beyond
    those (DEL, C1, U+2028/U+2029, bidi controls...) becomes a ``\\uXXXX`` escape, which reads back as
    the same value.  Printable text, ``é`` and ``日本`` included, stays as it is.
    """
    if doc.isprintable():
        return doc
    return _NOT_ASCII.sub(lambda m: "".join(map(_json_escaped, m[0])), doc)
