"""Path checks shared by Start and the wrapper: absolute, no ``..``, inside allowed roots."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from relion_zo.errors import InputError


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
        raise InputError(f"{what} {text!r} must be an absolute path")
    if ".." in path.parts:
        raise InputError(f"{what} {text!r} must not contain '..'")
    return path


def checked_relative(value: str, what: str) -> PurePosixPath:
    """A relative path or glob that cannot climb out of its base."""
    if not value:
        raise InputError(f"{what} is empty")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\x00" in value:
        raise InputError(f"{what} {value!r} must be relative and must not contain '..'")
    return path


def confine(path: Path, roots: Iterable[Path], what: str) -> Path:
    """Resolve links and require the result to lie inside one of ``roots`` (also resolved)."""
    real = path.resolve()
    resolved_roots = [Path(r).resolve() for r in roots]
    if not any(is_within(real, r) for r in resolved_roots):
        shown = ", ".join(str(r) for r in resolved_roots)
        raise InputError(f"{what} {path} is outside the allowed folders ({shown})")
    return real
