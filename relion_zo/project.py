"""The RELION project directory: where it goes, the Movies link, the gain reference."""

from __future__ import annotations

from pathlib import Path

import mrcfile

from relion_zo.errors import InputError
from relion_zo.paths import checked_relative, confine

PROCESSING_FOLDER = "processing"


def gain_reference_path(value: str, visit_dir: Path) -> Path:
    """``motioncor_gainreference`` as a path: absolute, or relative to ``<visit>/processing``."""
    path = Path(value)
    if not path.is_absolute():
        checked_relative(value, "gain reference")
        path = visit_dir / PROCESSING_FOLDER / path
    elif ".." in path.parts:
        raise InputError(f"gain reference {value!r} must not contain '..'")
    return path


def check_gain_reference(value: str, visit_dir: Path) -> Path:
    """The gain reference must exist inside the visit and read as a 2D MRC image."""
    path = gain_reference_path(value, visit_dir)
    if not path.is_file():
        raise InputError(f"gain reference {path} does not exist")
    real = confine(path, [visit_dir], "gain reference")
    try:
        with mrcfile.open(real, permissive=False, header_only=True) as mrc:
            nx, ny, nz = (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz))
    except (ValueError, OSError) as exc:
        raise InputError(f"gain reference {path} is not a readable MRC image: {exc}") from None
    if nx < 1 or ny < 1 or nz != 1:
        raise InputError(f"gain reference {path} is not a single 2D image ({nx}x{ny}x{nz})")
    return real
