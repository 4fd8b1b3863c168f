"""Tiny synthetic movies and gain references for the demo and the tests (``mrcfile``)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np


def movie_frames(
    size: int = 512, frames: int = 8, drift: tuple[int, int] = (2, -1), seed: int = 0
) -> np.ndarray:
    """Frames of blurred particles drifting by ``drift`` whole pixels per frame, Poisson noise."""
    rng = np.random.default_rng(seed)
    pad = max(abs(drift[0]), abs(drift[1])) * frames + 1
    full = size + 2 * pad
    # One sharp particle field, blurred once in Fourier space, then cropped at shifting windows.
    field = np.zeros((full, full), dtype=np.float32)
    count = max(8, size // 16)
    field[rng.integers(0, full, count), rng.integers(0, full, count)] = 1.0
    freq = np.fft.fftfreq(full).astype(np.float32)
    sigma = 6.0
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    blurred = np.fft.irfft2(np.fft.rfft2(field) * kernel[:, : full // 2 + 1], s=field.shape)
    blurred *= 2 * np.pi * sigma**2  # peak height about 1
    stack = np.empty((frames, size, size), dtype=np.float32)
    for f in range(frames):
        y0, x0 = pad + drift[1] * f, pad + drift[0] * f
        window = np.clip(blurred[y0 : y0 + size, x0 : x0 + size], 0, None)
        stack[f] = rng.poisson(2.0 + 4.0 * window).astype(np.float32)
    return stack


def write_movie(path: Path, *, size: int = 512, frames: int = 8, seed: int = 0, angpix=1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(movie_frames(size, frames, seed=seed))
        mrc.voxel_size = angpix
    return path


def write_movies(folder: Path, count: int, *, start: int = 1, prefix: str = "movie", **kw):
    return [
        write_movie(folder / f"{prefix}_{i:04d}.mrc", seed=i, **kw)
        for i in range(start, start + count)
    ]


def write_gain(path: Path, size: int = 512) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ones((size, size), dtype=np.float32))
    return path
