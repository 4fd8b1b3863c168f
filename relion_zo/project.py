"""The RELION project directory: where it goes, the Movies link, the gain reference."""

from __future__ import annotations

from pathlib import Path

import mrcfile

from relion_zo.errors import InputError
from relion_zo.paths import checked_relative, confine

PROCESSING_FOLDER = "processing"


def visit_file(value: str, visit_dir: Path, what: str) -> Path:
    """A file named in the parameters: absolute, or relative to ``<visit>/processing``; it must
    exist and resolve (links followed) inside the visit."""
    path = Path(value)
    if not path.is_absolute():
        checked_relative(value, what)
        path = visit_dir / PROCESSING_FOLDER / path
    elif ".." in path.parts:
        raise InputError(f"{what} {value!r} must not contain '..'")
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    return confine(path, [visit_dir], what)


def check_gain_reference(value: str, visit_dir: Path) -> Path:
    """The gain reference must exist inside the visit and read as a 2D MRC image."""
    path = visit_file(value, visit_dir, "gain reference")
    real = path
    try:
        with mrcfile.open(real, permissive=False, header_only=True) as mrc:
            nx, ny, nz = (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz))
    except (ValueError, OSError) as exc:
        raise InputError(f"gain reference {path} is not a readable MRC image: {exc}") from None
    if nx < 1 or ny < 1 or nz != 1:
        raise InputError(f"gain reference {path} is not a single 2D image ({nx}x{ny}x{nz})")
    return real
