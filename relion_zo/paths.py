"""Path rules shared by Start and the wrapper: absolute, no ``..``, inside allowed roots, and
safe to hand to RELION, which runs each job's command through ``/bin/sh``.

RELION 3.1 builds every job's command as one string and runs it with ``system()``: the import
glob goes in double quotes (``--i "Movies/*.tiff"``), the gain reference and defect file go in
unquoted, and movie and micrograph names reach ``gs`` and helper scripts. A value is therefore
accepted only when every character is one the shell leaves alone in both places (see
``docs/security.md``): ASCII letters and digits, ``_ . - + , : @ % =`` and ``/``, and printable
non-ASCII characters (their UTF-8 bytes never contain a shell metacharacter). Globs may also hold
``* ? [ ]``, which stay inside RELION's double quotes. No path component may start with ``-``
or be longer than 255 bytes, and a name must be valid UTF-8.

Writing inside a project never follows a symlink: ``open_new`` and ``open_append`` use
``O_NOFOLLOW`` (and ``O_EXCL`` for new files), so a link planted in a project folder makes the
write fail instead of landing elsewhere.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from relion_zo.errors import InputError

SAFE_ASCII = frozenset(string.ascii_letters + string.digits + "_.-+,:@%=/")
GLOB_CHARACTERS = frozenset("*?[]")
NAME_BYTES = 255  # NAME_MAX on Linux file systems
PATH_BYTES = 1024


def unsafe_reason(text: str, *, glob: bool = False) -> str | None:
    """Why ``text`` cannot go into a RELION command, or None when it can."""
    if not text:
        return "is empty"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > PATH_BYTES:
        return f"is longer than {PATH_BYTES} bytes"
    allowed = SAFE_ASCII | GLOB_CHARACTERS if glob else SAFE_ASCII
    for char in text:
        if char in allowed:
            continue
        if ord(char) > 127 and char.isprintable():
            continue
        if char == " ":
            shown = "a space"
        elif char.isprintable():
            shown = repr(char)
        else:
            shown = f"the control character {char!r}"
        return f"contains {shown}, which RELION would pass to a shell"
    for part in text.split("/"):
        if part.startswith("-"):
            return f"has a component starting with '-' ({part[:40]!r})"
        if len(part.encode("utf-8")) > NAME_BYTES:
            return f"has a component longer than {NAME_BYTES} bytes"
    return None


def check_shell_safe(text: str, what: str, *, glob: bool = False) -> str:
    """``text`` unchanged, or an ``InputError`` naming ``what``."""
    reason = unsafe_reason(text, glob=glob)
    if reason:
        raise InputError(f"{what} {shown_path(text)} {reason}")
    return text


def shown_path(text: str | os.PathLike[str]) -> str:
    """A path for a one-line message: quoted, undecodable bytes as escapes, long ones cut."""
    raw = os.fsencode(text)
    shown = repr(raw.decode("utf-8", "backslashreplace"))
    return shown if len(shown) <= 120 else shown[:100] + "…'"


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def checked_absolute(value: str | os.PathLike[str], what: str) -> Path:
    """An absolute path with no ``..`` component (before any link is followed)."""
    text = os.fspath(value)
    if not text:
        raise InputError(f"{what} is empty")
    if "\x00" in text:
        raise InputError(f"{what} contains a NUL character")
    path = Path(text)
    if not path.is_absolute():
        raise InputError(f"{what} {shown_path(text)} must be an absolute path")
    if ".." in path.parts:
        raise InputError(f"{what} {shown_path(text)} must not contain '..'")
    return path


def checked_relative(value: str, what: str) -> PurePosixPath:
    """A relative path or glob that cannot climb out of its base."""
    if not value:
        raise InputError(f"{what} is empty")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\x00" in value:
        raise InputError(f"{what} {shown_path(value)} must be relative and must not contain '..'")
    return path


def confine(path: Path, roots: Iterable[Path], what: str) -> Path:
    """Resolve links and require the result to lie inside one of ``roots`` (also resolved)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop, a name too long
        raise InputError(f"{what} {shown_path(path)} cannot be resolved: {exc}") from None
    resolved_roots = [Path(r).resolve() for r in roots]
    if not any(is_within(real, r) for r in resolved_roots):
        shown = ", ".join(str(r) for r in resolved_roots)
        raise InputError(f"{what} {shown_path(path)} is outside the allowed folders ({shown})")
    return real


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def _open(path: Path, flags: int, mode: str, what: str):
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise InputError(f"{what} {path} already exists (relion_zo never writes over it)") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symlink
            raise InputError(f"{what} {path} is a symbolic link; relion_zo does not follow it"
                             ) from None
        raise
    return os.fdopen(fd, mode)


def open_new(path: Path, what: str, mode: str = "w"):
    """Create ``path``; fails if anything (a file or a link) is already there."""
    return _open(path, _NEW, mode, what)


def open_append(path: Path, what: str, mode: str = "a"):
    """Append to ``path`` (created when missing); fails if it is a symbolic link."""
    return _open(path, _APPEND, mode, what)


def replace_with(path: Path, data: bytes | str, what: str) -> Path:
    """Write ``data`` to a new temporary file beside ``path``, then rename it over ``path``
    (a rename replaces a link at ``path`` itself, never its target)."""
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)
    with open_new(tmp, what, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    tmp.replace(path)
    return path
