"""Pictures of a job's results for the web UIs: a motion-corrected micrograph's snapshot, the
CTF fit's diagnostic spectrum and each 2D class average, as 8-bit greyscale PNG files beside
RELION's own outputs, their paths in ISPyB's rows (``micrographSnapshotFullPath``,
``fftTheoreticalFullPath``, ``classImageFullPath``).

Images are read with ``mrcfile``; PNG is written here with ``zlib`` (a greyscale PNG is a
header, the rows deflated and a trailer), so no imaging library is needed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import mrcfile
import numpy as np

from relion_zo.paths import replace_with

SNAPSHOT_SIZE = 512  # pixels across a micrograph's snapshot, at most
CONTRAST = (0.5, 99.5)  # percentiles mapped to black and white


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2D uint8 array."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("a 2D uint8 image")
    height, width = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + image[row].tobytes() for row in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def to_uint8(data: np.ndarray, percentiles: tuple[float, float] = CONTRAST) -> np.ndarray:
    """Greyscale: the given percentiles of ``data`` to 0 and 255, clipped."""
    data = np.asarray(data, dtype=np.float32)
    low, high = np.percentile(data[np.isfinite(data)], percentiles) if np.isfinite(
        data).any() else (0.0, 1.0)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((np.nan_to_num(data, nan=low) - low) * scale, 0, 255).astype(np.uint8)


def binned(data: np.ndarray, size: int) -> np.ndarray:
    """``data`` averaged in square blocks so that it is at most ``size`` pixels across."""
    factor = max(1, int(np.ceil(max(data.shape) / size)))
    height, width = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    return data[:height, :width].reshape(height // factor, factor, width // factor,
                                         factor).mean(axis=(1, 3))


def _write(path: Path, image: np.ndarray) -> Path:
    """Written beside and renamed over, never through a link (``paths.replace_with``)."""
    return replace_with(path, png_bytes(image), "picture")


def snapshot(micrograph: Path, out: Path, size: int = SNAPSHOT_SIZE) -> Path:
    """A micrograph's snapshot: binned to at most ``size`` pixels, contrast stretched."""
    with mrcfile.open(micrograph, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    if data.ndim == 3:
        data = data[0]
    return _write(out, to_uint8(binned(data, size)))


def ctf_image(diagnostic: Path, out: Path) -> Path:
    """The CTF fit's diagnostic spectrum (CTFFIND's ``.ctf`` output, an MRC stack whose first
    image is the spectrum with the fit)."""
    with mrcfile.open(diagnostic, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    if data.ndim == 3:
        data = data[0]
    return _write(out, to_uint8(data, (1.0, 99.0)))


def class_average(stack: Path, index: int, out: Path, size: int = 96) -> Path:
    """One 2D class average (image ``index``, from 1, of RELION's ``classes.mrcs``), enlarged
    to about ``size`` pixels."""
    with mrcfile.mmap(stack, permissive=True) as mrc:
        data = np.asarray(mrc.data[index - 1], dtype=np.float32)
    tile = to_uint8(data, (1.0, 99.0))
    factor = max(1, size // max(tile.shape))
    return _write(out, np.kron(tile, np.ones((factor, factor), np.uint8)))


def picks(micrograph: Path, coordinates: list[tuple[float, float]], diameter_px: float,
          out: Path, size: int = SNAPSHOT_SIZE) -> Path:
    """The micrograph's snapshot with a white ring around each pick (``coordinates`` in the
    micrograph's pixels, ``diameter_px`` the particle's diameter in them)."""
    with mrcfile.open(micrograph, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    if data.ndim == 3:
        data = data[0]
    factor = max(1, int(np.ceil(max(data.shape) / size)))
    image = to_uint8(binned(data, size))
    radius = max(2.0, diameter_px / 2 / factor)
    reach = int(np.ceil(radius)) + 1
    offsets = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    ring = np.abs(np.hypot(dy, dx) - radius) < 0.75
    ys, xs = dy[ring], dx[ring]
    for x, y in coordinates:
        rows = np.round(y / factor).astype(int) + ys
        cols = np.round(x / factor).astype(int) + xs
        keep = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
        image[rows[keep], cols[keep]] = 255
    return _write(out, image)
