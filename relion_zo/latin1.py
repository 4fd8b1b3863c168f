"""ISPyB's text columns are latin1, as ISPyB's own schema declares them (MariaDB's latin1 is
Windows-1252). Text outside it is refused by a strict server (errors 1366, 1267) and turned into
``?`` by a lenient one, so relion_zo decides before the database does:

- what a user gives (a folder, a template, a parameter, a comment) is refused at Start with the
  field named: ``unstorable`` finds the first character that cannot be stored;
- what relion_zo writes itself (progress, final and failure messages, command lines, paths in
  attachments) is made storable: ``storable`` replaces each such character with ``?``, the
  replacement MariaDB itself would make, so a heartbeat never fails on a movie's name.
"""

from __future__ import annotations

CODEC = "cp1252"
REPLACEMENT = "?"


def unstorable(text: str) -> str | None:
    """The first character of ``text`` that a latin1 column cannot hold, or None."""
    try:
        text.encode(CODEC)
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def storable(text: str) -> str:
    """``text`` with every character a latin1 column cannot hold replaced by ``?``."""
    return text.encode(CODEC, errors="replace").decode(CODEC)


def describe(char: str) -> str:
    """A character for a one-line message: itself (when printable) and its code point."""
    shown = char if char.isprintable() else ""
    return f"{shown!r} (U+{ord(char):04X})" if shown else f"U+{ord(char):04X}"
