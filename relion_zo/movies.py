"""Which movies a glob matches, and whether each one may be handed to RELION.

RELION imports movies with its own glob (``glob(3)``) and later passes their names through a
shell, so every movie is checked before a pass may import it, at Start and again at run time:

- its name must be safe in a RELION command (``paths.unsafe_reason``) and valid UTF-8;
- it must be a regular file (a folder named like a movie is refused) and, links followed, lie
  inside the allowed folders (a link leading out of the visit is refused);
- it must be complete: an MRC movie must be as long as its header says; a TIFF or EER movie
  must start with a TIFF signature; and it must not have changed for ``settle_seconds``.

A movie that is not complete yet may still be arriving: the caller waits for it. Every other
problem is final and names the movie. Matching uses Python's ``glob`` on bytes, which follows
``glob(3)``'s rules (``*`` does not match a leading dot), so both count the same files, names
that are not UTF-8 included.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import mrcfile

from relion_zo.errors import InputError
from relion_zo.paths import is_within, shown_path, unsafe_reason

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
MRC_SUFFIXES = (".mrc", ".mrcs")


@dataclass(frozen=True)
class Problem:
    name: str
    reason: str
    may_still_arrive: bool = False  # incomplete: wait for it, then look again

    def text(self) -> str:
        return f"movie {shown_path(self.name)} {self.reason}"


def matching(base: Path, pattern: str) -> list[str]:
    """Names matching ``pattern`` under ``base``, relative to it (undecodable bytes kept as
    surrogate escapes, so they can be told apart and refused)."""
    names = glob.glob(os.fsencode(pattern), root_dir=os.fsencode(base))
    return sorted(os.fsdecode(name) for name in names)


def _mrc_problem(path: Path, size: int) -> str | None:
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            header = mrc.header
            if header is None:
                return "has no MRC header yet"
            mode = int(header.mode)
            voxels = int(header.nx) * int(header.ny) * int(header.nz)
            extended = int(header.nsymbt)
    except (ValueError, OSError) as exc:
        return f"is not a readable MRC file ({exc})"
    itemsize = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}.get(mode)
    if itemsize is None:
        return f"has MRC mode {mode}, which RELION cannot read"
    expected = 1024 + extended + voxels * itemsize
    if voxels <= 0:
        return "has no frames in its MRC header"
    if size < expected:
        return f"is incomplete ({size} of {expected} bytes)"
    return None


def _tiff_problem(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head not in TIFF_SIGNATURES:
        return "does not start with a TIFF signature (incomplete?)"
    return None


class MovieChecker:
    """Checks movies once each: a movie that passed is not read again unless its size or time
    changes. ``roots``: where movies may lie once links are followed."""

    def __init__(self, roots: Iterable[Path], settle_seconds: float = 1.0, clock=time.time):
        self.roots = [Path(r).resolve() for r in roots]
        self.settle_seconds = settle_seconds
        self.clock = clock
        self._good: dict[str, tuple[int, int]] = {}

    def problem(self, base: Path, name: str) -> Problem | None:
        reason = unsafe_reason(name)
        if reason:
            return Problem(name, reason)
        path = base / name
        try:
            stat = path.stat()
        except OSError as exc:
            return Problem(name, f"cannot be read: {exc.strerror}")
        if not path.is_file():
            return Problem(name, "is not a file")
        key = (stat.st_size, stat.st_mtime_ns)
        if self._good.get(name) == key:
            return None
        real = path.resolve()
        if not any(is_within(real, root) for root in self.roots):
            return Problem(name, f"leads outside the visit (to {real})")
        if self.clock() - stat.st_mtime < self.settle_seconds:
            return Problem(name, "is still being written", may_still_arrive=True)
        lower = name.lower()
        try:
            found = (_mrc_problem(path, stat.st_size) if lower.endswith(MRC_SUFFIXES)
                     else _tiff_problem(path))
        except OSError as exc:
            return Problem(name, f"cannot be read: {exc.strerror}")
        if found:
            return Problem(name, found, may_still_arrive=True)
        self._good[name] = key
        return None

    def problems(self, base: Path, names: Iterable[str]) -> list[Problem]:
        return [p for p in (self.problem(base, n) for n in names) if p is not None]


def check_all(base: Path, names: Iterable[str], roots: Iterable[Path]) -> None:
    """Start's check: no movie may have a final problem (one still arriving is fine)."""
    checker = MovieChecker(roots, settle_seconds=0)
    for problem in checker.problems(base, names):
        if not problem.may_still_arrive:
            raise InputError(problem.text())
