"""Synthetic cryo-EM movies of a known particle, for running the whole relion_it pipeline.

``synthetic.py`` writes drifting noise, enough for Import and MotionCorr. This module writes
movies that every later stage can work on too, with the truth recorded beside them:

* a small asymmetric density (:data:`BLOBS`, six Gaussian blobs, 107 Å across), projected
  analytically (a rotated isotropic Gaussian projects to a 2D Gaussian) at orientations uniform on
  SO(3), at non-overlapping random positions;
* a known defocus per movie, applied in Fourier space with RELION's CTF (:func:`ctf`);
* a known drift per frame (sub-pixel, applied as a Fourier phase ramp), then Poisson shot noise
  in every frame.

Conventions (checked against RELION 3.1's own programs in ``tests/test_particles.py``):

* Arrays are ``[y, x]`` (``[z, y, x]`` for volumes), as ``mrcfile`` reads them; a particle
  coordinate ``(x, y)`` is the 0-based column and row of the pixel holding the particle's centre
  of mass, the numbers RELION's pickers write as ``rlnCoordinateX``/``Y``.
* Euler angles are RELION's (ZYZ, ``rot``, ``tilt``, ``psi``, degrees, :func:`euler_matrix`); a
  particle's image is the projection along z of ``V(A^T r)``, as ``relion_project`` makes it.
* Contrast: particles are **dark on a lighter background** in the movies, as protein is in real
  raw micrographs and as RELION expects them: the LoG picker looks for dark blobs unless given
  ``--Log_invert``, and Extract's default "Invert contrast? Yes" turns them white, which is what
  Class2D and the 3D jobs assume. The movies hold electron counts,
  ``Poisson(dose · (1 − CTF ⊛ (contrast · projection + ice)))``, so with RELION's CTF (positive in
  its first lobe, ``sin(asin(Q))`` = Q at zero frequency) protein darkens the image.
* Drift: ``drift[f]`` is how far the specimen has moved in frame ``f`` (pixels, ``(x, y)``)
  relative to frame 0, whose drift is ``(0, 0)``. RELION's own motion correction aligns every frame
  to the first, so the corrected micrograph shows the particles at ``coordinates`` and the shifts it
  writes are ``-drift``.

Default sizes: 1024² frames of 2.0 Å, 8 frames, 100 particles of 107 Å (54 px) each. RELION's
power-spectrum crop works at this size and pixel (512² at 1.0 Å fails with ``--ps_size 512``);
its own motion correction takes about 0.25 s and its LoG picker 0.05 s per micrograph here; a box
of 80 px (160 Å, room for the default background circle of 30 px beyond the particle's 27 px
radius) extracts quickly and can be rescaled to 48 px for classification, where RELION's CPU
cost lies. One movie takes about 1 s to write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import mrcfile
import numpy as np

__all__ = [
    "BLOBS",
    "Blob",
    "MovieTruth",
    "ctf",
    "density",
    "electron_wavelength",
    "euler_matrix",
    "particle_diameter",
    "project",
    "read_truth_json",
    "write_coordinate_stars",
    "write_micrographs_star",
    "write_particle_movies",
    "write_reference_volume",
    "write_truth_json",
    "write_truth_star",
]


@dataclass(frozen=True)
class Blob:
    """One isotropic Gaussian of the density: centre ``(x, y, z)`` and ``sigma`` in Å, ``weight``
    its peak value."""

    x: float
    y: float
    z: float
    sigma: float
    weight: float


def _centred(blobs: Sequence[Blob]) -> tuple[Blob, ...]:
    """The blobs moved so that their centre of mass is at the origin (the box centre), so that a
    true particle coordinate is where RELION's recentring would put the particle too."""
    mass = np.array([b.weight * b.sigma**3 for b in blobs])
    centres = np.array([(b.x, b.y, b.z) for b in blobs])
    com = (mass[:, None] * centres).sum(0) / mass.sum()
    return tuple(
        Blob(*(c - com).round(3).tolist(), sigma=b.sigma, weight=b.weight)
        for b, c in zip(blobs, centres)
    )


# Six blobs of different sizes, no two alike and not in one plane: no symmetry, and a mirror image
# that differs (the hand is defined). 107 Å across at two sigma (particle_diameter()).
BLOBS: tuple[Blob, ...] = _centred(
    (
        Blob(0.0, 0.0, 0.0, 15.0, 1.00),
        Blob(28.0, 10.0, -8.0, 11.0, 0.90),
        Blob(-20.0, 26.0, 10.0, 9.0, 0.85),
        Blob(-6.0, -30.0, 16.0, 8.0, 0.80),
        Blob(12.0, -8.0, 32.0, 7.0, 0.75),
        Blob(-30.0, -12.0, -20.0, 6.0, 0.70),
    )
)
# Projections are divided by this, the line integral through the centre of the largest blob, so
# that ``contrast`` is the peak phase contrast of one blob alone.
MOVIE_SIZE = 1024  # pixels: RELION's 512-pixel power spectra need movies larger than that
_NORM = max(b.weight * b.sigma for b in BLOBS) * math.sqrt(2 * math.pi)


def particle_diameter(blobs: Sequence[Blob] = BLOBS) -> float:
    """Diameter in Å of the sphere around the centre that holds every blob out to two sigma."""
    return 2 * max(math.sqrt(b.x**2 + b.y**2 + b.z**2) + 2 * b.sigma for b in blobs)


def density(box: int = 80, angpix: float = 2.0, blobs: Sequence[Blob] = BLOBS) -> np.ndarray:
    """The known map, ``[z, y, x]`` float32 of ``box`` voxels of ``angpix`` Å, the origin at voxel
    ``box // 2`` (RELION's centre), protein positive."""
    axis = (np.arange(box) - box // 2) * angpix
    z, y, x = axis[:, None, None], axis[None, :, None], axis[None, None, :]
    vol = np.zeros((box, box, box), dtype=np.float64)
    for b in blobs:
        vol += b.weight * np.exp(
            -((x - b.x) ** 2 + (y - b.y) ** 2 + (z - b.z) ** 2) / (2 * b.sigma**2)
        )
    return vol.astype(np.float32)


def write_reference_volume(
    path: Path, box: int = 80, angpix: float = 2.0, blobs: Sequence[Blob] = BLOBS
) -> Path:
    """Write :func:`density` as an MRC volume with its voxel size, for Class3D's reference or to
    compare an InitialModel with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(density(box, angpix, blobs))
        mrc.voxel_size = angpix
    return path


def euler_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's rotation matrix ``A`` for Euler angles in degrees (ZYZ; ``Euler_angles2matrix``).

    A point ``c`` of the map appears at ``(A c)[:2]`` in the projection."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    rz_psi = np.array([[cg, sg, 0], [-sg, cg, 0], [0, 0, 1]])
    ry_tilt = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    rz_rot = np.array([[ca, sa, 0], [-sa, ca, 0], [0, 0, 1]])
    return rz_psi @ ry_tilt @ rz_rot


def _matrix_to_euler(a: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`euler_matrix` (tilt in [0, 180])."""
    tilt = math.acos(float(np.clip(a[2, 2], -1.0, 1.0)))
    if abs(math.sin(tilt)) > 1e-9:
        rot = math.atan2(a[2, 1], a[2, 0])
        psi = math.atan2(a[1, 2], -a[0, 2])
    else:  # gimbal lock: only rot + psi (or rot - psi) is defined; put it all in psi
        rot = 0.0
        psi = math.atan2(-a[1, 0], a[0, 0]) if a[2, 2] > 0 else math.atan2(a[1, 0], -a[0, 0])
    return math.degrees(rot), math.degrees(tilt), math.degrees(psi)


def _random_eulers(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` orientations uniform on SO(3) (normalised Gaussian quaternions), as RELION Euler
    angles (``n`` x 3, degrees)."""
    q = rng.normal(size=(n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    mats = np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)
    return np.array([_matrix_to_euler(m) for m in mats]).reshape(n, 3)


def _fast_length(n: int) -> int:
    """The least 2^a 3^b 5^c >= n, a quick size for FFTs."""
    best = 2 * n
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def _splat(
    image: np.ndarray,
    centre: tuple[float, float],
    eulers: Sequence[float],
    angpix: float,
    blobs: Sequence[Blob],
    scale: float,
) -> None:
    """Add ``scale`` x the projection of ``blobs`` at Euler angles ``eulers``, its origin at
    ``centre = (x, y)`` pixels of ``image``, evaluating each 2D Gaussian within four sigma."""
    a = euler_matrix(*eulers)
    height, width = image.shape
    for b in blobs:
        px, py, _ = a @ np.array([b.x, b.y, b.z]) / angpix
        cx, cy = centre[0] + px, centre[1] + py
        s = b.sigma / angpix
        reach = math.ceil(4 * s)
        x0, x1 = max(math.floor(cx) - reach, 0), min(math.floor(cx) + reach + 2, width)
        y0, y1 = max(math.floor(cy) - reach, 0), min(math.floor(cy) + reach + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1) - cx
        ys = np.arange(y0, y1) - cy
        # line integral of w exp(-r^2 / 2 sigma^2) along z, in Å of path
        peak = scale * b.weight * b.sigma * math.sqrt(2 * math.pi)
        image[y0:y1, x0:x1] += peak * np.outer(
            np.exp(-(ys**2) / (2 * s**2)), np.exp(-(xs**2) / (2 * s**2))
        )


def project(
    rot: float,
    tilt: float,
    psi: float,
    box: int = 80,
    angpix: float = 2.0,
    blobs: Sequence[Blob] = BLOBS,
) -> np.ndarray:
    """The exact projection of :func:`density` at RELION Euler angles, a ``box`` x ``box`` image
    with the origin at pixel ``box // 2``, in the map's units times Å (``relion_project`` of
    :func:`write_reference_volume`'s map gives the same image, scaled: it sums voxels)."""
    image = np.zeros((box, box), dtype=np.float64)
    _splat(image, (box // 2, box // 2), (rot, tilt, psi), angpix, blobs, 1.0)
    return image


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (RELION's formula)."""
    volts = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(volts * (1 + volts * 0.978466e-6))


def ctf(
    shape: tuple[int, int],
    angpix: float,
    defocus_u: float,
    defocus_v: float,
    defocus_angle: float,
    *,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    bfactor: float = 0.0,
) -> np.ndarray:
    """RELION's CTF on the ``rfft2`` grid of an image of ``shape`` (rows, columns).

    ``defocus_u``/``defocus_v`` in Å (positive = underfocus), ``defocus_angle`` in degrees from the
    x axis to the U direction, ``voltage`` in kV, ``cs`` in mm, ``bfactor`` in Å² (envelope
    ``exp(-B k^2 / 4)``). As in RELION's ``CTF::getCTF``: ``sin(pi lambda df k^2 - pi/2 Cs
    lambda^3 k^4 + asin(Q))``, so Q at zero frequency and positive in the first lobe."""
    ky = np.fft.fftfreq(shape[0], d=angpix)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=angpix)[None, :]
    k2 = kx**2 + ky**2
    azimuth = np.arctan2(ky, kx)
    df = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * np.cos(
        2 * (azimuth - math.radians(defocus_angle))
    )
    lam = electron_wavelength(voltage)
    cs_a = cs * 1e7
    chi = (
        math.pi * lam * df * k2
        - 0.5 * math.pi * cs_a * lam**3 * k2**2
        + math.asin(amplitude_contrast)
    )
    result = np.sin(chi)
    if bfactor:
        result *= np.exp(-bfactor * k2 / 4)
    return result


@dataclass(frozen=True)
class MovieTruth:
    """What one synthetic movie holds. Lengths in pixels of the movie unless named otherwise."""

    path: str  # the movie file
    size: int  # frames are size x size pixels
    frames: int
    angpix: float  # Å per pixel
    dose_per_frame: float  # e/Å² per frame
    voltage: float  # kV
    cs: float  # mm
    amplitude_contrast: float
    defocus_u: float  # Å, RELION's rlnDefocusU (underfocus positive)
    defocus_v: float  # Å
    defocus_angle: float  # degrees, rlnDefocusAngle
    drift: tuple[tuple[float, float], ...]  # (x, y) of the specimen in each frame; frame 0 (0, 0)
    coordinates: tuple[tuple[float, float], ...]  # particle centres (x, y) in frame 0
    angles: tuple[tuple[float, float, float], ...]  # RELION (rot, tilt, psi) of each particle

    @property
    def total_drift(self) -> tuple[float, float]:
        """Where the last frame is relative to the first, pixels ``(x, y)``."""
        return self.drift[-1]


def _drift_path(rng: np.random.Generator, frames: int, total: float) -> np.ndarray:
    """Beam-induced motion: fast at first, slowing down, bending a little; frame 0 at 0."""
    f = np.arange(frames, dtype=np.float64)
    tau = max(frames / 3.0, 1.0)
    along = (1 - np.exp(-f / tau)) / (1 - np.exp(-(frames - 1) / tau)) if frames > 1 else f
    across = 0.15 * np.sin(np.pi * along)
    theta = rng.uniform(0, 2 * np.pi)
    u = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([-u[1], u[0]])
    return total * (along[:, None] * u + across[:, None] * n)


def _positions(
    rng: np.random.Generator, count: int, size: int, margin: float, spacing: float
) -> np.ndarray:
    """``count`` points (x, y) in [margin, size - margin]², no two closer than ``spacing``."""
    chosen: list[np.ndarray] = []
    low, high = margin, size - 1 - margin
    if high <= low:
        raise ValueError(f"a {size}-pixel micrograph has no room inside a {margin}-pixel margin")
    for _ in range(200 * count):
        if len(chosen) == count:
            break
        p = rng.uniform(low, high, 2)
        if not chosen or np.min(np.hypot(*(np.array(chosen) - p).T)) >= spacing:
            chosen.append(p)
    if len(chosen) < count:
        raise ValueError(
            f"only {len(chosen)} of {count} particles fit {spacing:.0f} pixels apart on a "
            f"{size}-pixel micrograph; ask for fewer or a larger size"
        )
    return np.array(chosen)


def _movie(
    rng: np.random.Generator,
    *,
    size: int,
    angpix: float,
    frames: int,
    count: int,
    defocus: tuple[float, float, float],
    drift: np.ndarray,
    dose_per_frame: float,
    contrast: float,
    ice: float,
    bfactor: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    margin: float,
    spacing: float,
    blobs: Sequence[Blob],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One movie's frames (float32 counts), particle coordinates and Euler angles."""
    coords = _positions(rng, count, size, margin, spacing)
    eulers = _random_eulers(rng, count)
    # A canvas larger than the movie so that neither the drift nor the CTF's delocalisation wraps
    # around into the part that is kept.
    pad = math.ceil(np.abs(drift).max()) + 32
    n = _fast_length(size + 2 * pad)
    phase = np.zeros((n, n), dtype=np.float64)
    for (x, y), e in zip(coords, eulers):
        _splat(phase, (x + pad, y + pad), e, angpix, blobs, contrast / _NORM)
    if ice:
        phase += rng.normal(0.0, ice, phase.shape)
    spectrum = np.fft.rfft2(phase)
    spectrum *= ctf(
        (n, n),
        angpix,
        *defocus,
        voltage=voltage,
        cs=cs,
        amplitude_contrast=amplitude_contrast,
        bfactor=bfactor,
    )
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    counts = dose_per_frame * angpix**2
    stack = np.empty((frames, size, size), dtype=np.float32)
    for f in range(frames):
        dx, dy = drift[f]
        # the specimen moved by (dx, dy): frame f at r shows the specimen of frame 0 at r - d
        ramp = np.exp(-2j * np.pi * ky * dy) * np.exp(-2j * np.pi * kx * dx)  # separable
        shifted = np.fft.irfft2(spectrum * ramp, s=(n, n))
        image = 1.0 - shifted[pad : pad + size, pad : pad + size]
        stack[f] = rng.poisson(counts * np.clip(image, 0.0, None))
    return stack, coords, eulers


def write_particle_movies(
    folder: Path,
    count: int,
    *,
    seed: int = 0,
    size: int = MOVIE_SIZE,
    angpix: float = 2.0,
    frames: int = 8,
    particles_per_movie: int = 100,
    defocus_range: tuple[float, float] = (12000.0, 25000.0),
    astigmatism: float = 400.0,
    total_drift: tuple[float, float] = (3.0, 6.0),
    dose_per_frame: float = 5.0,
    contrast: float = 0.3,
    ice: float = 0.1,
    bfactor: float = 60.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    margin: float | None = None,
    prefix: str = "movie",
    start: int = 1,
    suffix: str = ".mrc",
    blobs: Sequence[Blob] = BLOBS,
) -> list[MovieTruth]:
    """Write ``count`` movies ``{prefix}_{start:04d}{suffix}``... into ``folder``; return their truth.

    folder: where the movies go (created).
    count: how many movies.
    seed: everything random (positions, orientations, defocus, drift, noise) follows from it;
        movie ``i`` uses ``(seed, i)``, so one movie does not change when ``count`` does.
    size: frame width and height in pixels.
    angpix: pixel size in Å.
    frames: frames per movie.
    particles_per_movie: particles on each micrograph, never overlapping.
    defocus_range: (low, high) mean defocus in Å (underfocus positive), uniform per movie.
    astigmatism: largest ``defocus_u - defocus_v`` in Å (uniform in [0, astigmatism]), at a
        uniform random angle.
    total_drift: (low, high) length in pixels of the whole drift from the first frame to the last.
    dose_per_frame: e/Å² per frame; the mean count of a pixel is ``dose_per_frame * angpix**2``.
    contrast: peak phase contrast of the largest blob alone before the CTF (the particle's
        projection is scaled by this). With the other defaults, 0.3 leaves single frames
        looking like noise and particles faint but visible in the corrected sum; RELION's LoG
        picker then finds all of them (and some 15 % false picks); at 0.1 it still finds 96 %,
        with more than half of its picks false.
    ice: standard deviation per pixel of white "structural" noise added before the CTF (ice and
        support). It carries Thon rings over the whole micrograph, so a CTF estimator sees them
        between the particles, and it moves with the specimen.
    bfactor: envelope of the CTF in Å², ``exp(-B k^2 / 4)``.
    voltage, cs, amplitude_contrast: the microscope (kV, mm, fraction), as given to RELION.
    margin: least distance in pixels from a particle centre to the edge; default the particle
        radius plus 8 pixels, so every particle lies wholly inside the micrograph.
    prefix, start, suffix: file names.
    blobs: the density; :data:`BLOBS` unless a test wants another.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    radius = particle_diameter(blobs) / 2 / angpix
    margin = radius + 8 if margin is None else margin
    truths = []
    for i in range(start, start + count):
        rng = np.random.default_rng((seed, i))
        mean = rng.uniform(*defocus_range)
        astig = rng.uniform(0.0, astigmatism)
        angle = float(rng.uniform(-90.0, 90.0))
        defocus = (mean + astig / 2, mean - astig / 2, angle)
        drift = _drift_path(rng, frames, rng.uniform(*total_drift))
        stack, coords, eulers = _movie(
            rng,
            size=size,
            angpix=angpix,
            frames=frames,
            count=particles_per_movie,
            defocus=defocus,
            drift=drift,
            dose_per_frame=dose_per_frame,
            contrast=contrast,
            ice=ice,
            bfactor=bfactor,
            voltage=voltage,
            cs=cs,
            amplitude_contrast=amplitude_contrast,
            margin=margin,
            spacing=2 * radius,
            blobs=blobs,
        )
        path = folder / f"{prefix}_{i:04d}{suffix}"
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(stack)
            mrc.set_image_stack()
            mrc.voxel_size = angpix
        truths.append(
            MovieTruth(
                path=str(path),
                size=size,
                frames=frames,
                angpix=angpix,
                dose_per_frame=dose_per_frame,
                voltage=voltage,
                cs=cs,
                amplitude_contrast=amplitude_contrast,
                defocus_u=round(defocus[0], 2),
                defocus_v=round(defocus[1], 2),
                defocus_angle=round(defocus[2], 3),
                drift=tuple((round(float(x), 4), round(float(y), 4)) for x, y in drift),
                coordinates=tuple((round(float(x), 3), round(float(y), 3)) for x, y in coords),
                angles=tuple(tuple(round(float(a), 4) for a in e) for e in eulers),
            )
        )
    return truths


def write_truth_json(path: Path, truths: Sequence[MovieTruth]) -> Path:
    """Write the truth of every movie as one JSON list (:func:`read_truth_json` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(t) for t in truths], indent=1))
    return path


def read_truth_json(path: Path) -> list[MovieTruth]:
    def thaw(d: dict) -> MovieTruth:
        for key in ("drift", "coordinates", "angles"):
            d[key] = tuple(tuple(v) for v in d[key])
        return MovieTruth(**d)

    return [thaw(d) for d in json.loads(Path(path).read_text())]


def _micrograph_names(truths: Sequence[MovieTruth], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [str(Path(t.path).with_suffix(".mrc")) for t in truths]
    if len(names) != len(truths):
        raise ValueError(f"{len(names)} micrograph names for {len(truths)} movies")
    return [str(n) for n in names]


def _optics_block(t: MovieTruth) -> list[str]:
    return [
        "",
        "# version 30001",
        "",
        "data_optics",
        "",
        "loop_",
        "_rlnOpticsGroupName #1",
        "_rlnOpticsGroup #2",
        "_rlnMicrographPixelSize #3",
        "_rlnVoltage #4",
        "_rlnSphericalAberration #5",
        "_rlnAmplitudeContrast #6",
        f"opticsGroup1 1 {t.angpix:.6f} {t.voltage:.6f} {t.cs:.6f} {t.amplitude_contrast:.6f}",
        "",
    ]


def _loop(block: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["", "# version 30001", "", f"data_{block}", "", "loop_"]
    lines += [f"_rln{c} #{i}" for i, c in enumerate(columns, 1)]
    lines += [" ".join(str(v) for v in row) for row in rows]
    return lines + [""]


def write_micrographs_star(
    path: Path, truths: Sequence[MovieTruth], names: Sequence[str] | None = None
) -> Path:
    """A RELION 3.1 micrographs STAR file with the true CTF of each movie, in the form CtfFind
    writes (``micrographs_ctf.star``), so Extract can run where no CTF estimator is installed.

    names: the motion-corrected micrographs, e.g. ``MotionCorr/job002/Movies/movie_0001.mrc``;
    default each movie's path with ``.mrc``."""
    if not truths:
        raise ValueError("no movies")
    rows = [
        (name, 1, f"{t.defocus_u:.2f}", f"{t.defocus_v:.2f}", f"{t.defocus_angle:.3f}")
        for t, name in zip(truths, _micrograph_names(truths, names))
    ]
    columns = ("MicrographName", "OpticsGroup", "DefocusU", "DefocusV", "DefocusAngle")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(_optics_block(truths[0]) + _loop("micrographs", columns, rows)) + "\n"
    )
    return path


def _job_relative(name: str) -> PurePosixPath:
    """A micrograph's path as RELION's pickers mirror it in their output folder: without a
    leading ``Type/jobNNN/`` (``MotionCorr/job002/Movies/a.mrc`` -> ``Movies/a.mrc``)."""
    parts = PurePosixPath(name).parts
    if len(parts) > 2 and parts[1].startswith("job"):
        parts = parts[2:]
    return PurePosixPath(*parts)


def write_coordinate_stars(
    folder: Path,
    truths: Sequence[MovieTruth],
    names: Sequence[str] | None = None,
    suffix: str = "truth",
    micrographs_star: str | None = None,
) -> list[Path]:
    """The true particle coordinates, laid out as RELION's AutoPick writes its picks, so that
    Extract (``relion_preprocess --coord_dir folder/ --coord_suffix _truth.star``) can take them.

    One ``{micrograph}_{suffix}.star`` (``rlnCoordinateX``/``Y``) per movie under ``folder``, the
    micrograph path mirrored as RELION mirrors it (without its ``Type/jobNNN/``). ``names`` as in
    :func:`write_micrographs_star`. With ``micrographs_star``, also
    ``coords_suffix_{suffix}.star`` naming it, the file Extract's "Input coordinates:" is given."""
    folder = Path(folder)
    written = []
    for t, name in zip(truths, _micrograph_names(truths, names)):
        path = folder / _job_relative(name).with_suffix("")
        path = path.with_name(f"{path.name}_{suffix}.star")
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [(f"{x:.3f}", f"{y:.3f}") for x, y in t.coordinates]
        path.write_text("\n".join(_loop("", ("CoordinateX", "CoordinateY"), rows)) + "\n")
        written.append(path)
    if micrographs_star is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"coords_suffix_{suffix}.star").write_text(f"{micrographs_star}\n")
    return written


def write_truth_star(
    path: Path, truths: Sequence[MovieTruth], names: Sequence[str] | None = None
) -> Path:
    """A RELION 3.1 particles STAR file of every true particle: micrograph, coordinates, Euler
    angles and the movie's CTF, to compare with what the pipeline finds. ``names`` as in
    :func:`write_micrographs_star`."""
    if not truths:
        raise ValueError("no movies")
    columns = (
        "MicrographName",
        "CoordinateX",
        "CoordinateY",
        "AngleRot",
        "AngleTilt",
        "AnglePsi",
        "DefocusU",
        "DefocusV",
        "DefocusAngle",
        "OpticsGroup",
    )
    rows = []
    for t, name in zip(truths, _micrograph_names(truths, names)):
        for (x, y), (rot, tilt, psi) in zip(t.coordinates, t.angles):
            rows.append(
                (
                    name,
                    f"{x:.3f}",
                    f"{y:.3f}",
                    rot,
                    tilt,
                    psi,
                    f"{t.defocus_u:.2f}",
                    f"{t.defocus_v:.2f}",
                    f"{t.defocus_angle:.3f}",
                    1,
                )
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(_optics_block(truths[0]) + _loop("particles", columns, rows)) + "\n")
    return path
