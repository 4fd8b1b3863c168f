"""What RELION has made so far in a project, read from its STAR files for ISPyB's result tables
(``Movie``, ``MotionCorrection``, ``CTF``, ``ParticlePicker``, ``ParticleClassificationGroup``,
``ParticleClassification``, ``CryoemInitialModel``). Plain functions over files, no database:
``relion_zo.manager`` writes the rows (``record_results``), once each.

Values are RELION's, with the meanings ISPyB's columns have where Diamond's services fill them
(docs/results.md): motion in the movie's pixels, as RELION's ``rlnAccumMotionTotal`` (summed
frame-to-frame shifts); defoci and resolutions in Å; astigmatism ``defocusU - defocusV``;
a class's distribution a fraction. STAR files are read with ``starfile``; a file RELION is
still writing, or one that is missing, gives nothing for now (the next look reads it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import starfile

from relion_zo.paths import replace_with
from relion_zo.relion_it import batches as bt


@dataclass(frozen=True)
class MovieResult:
    """One movie through motion correction (and CTF estimation and picking, once done)."""

    number: int  # its place in Import's movies.star, from 1
    movie: str  # the movie's real path
    created: dt.datetime  # the movie file's modification time
    frames: int
    micrograph: str  # absolute path of the motion-corrected sum
    first_frame: int
    last_frame: int
    dose_per_frame: float
    total_motion: float  # rlnAccumMotionTotal
    early_motion: float
    late_motion: float
    drift: tuple[tuple[float, float], ...]  # (x, y) shift of each frame
    ctf: CtfResult | None = None
    picks: tuple[PickResult, ...] = ()

    @property
    def average_motion_per_frame(self) -> float:
        return self.total_motion / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class CtfResult:
    defocus_u: float
    defocus_v: float
    angle: float
    resolution: float  # rlnCtfMaxResolution
    figure_of_merit: float
    image: str  # absolute path of the diagnostic spectrum (CTFFIND's .ctf)

    @property
    def defocus(self) -> float:
        return (self.defocus_u + self.defocus_v) / 2

    @property
    def astigmatism(self) -> float:
        return self.defocus_u - self.defocus_v


@dataclass(frozen=True)
class PickResult:
    picker: str  # what picked: "LoG", "crYOLO <model>", "3D reference <map>"
    job: str  # the RELION job (its folder)
    particles: int


@dataclass(frozen=True)
class ClassResult:
    number: int  # from 1
    image: str  # absolute path: a 2D average ("n@classes.mrcs") or a 3D map
    distribution: float
    rotation_accuracy: float
    translation_accuracy: float
    resolution: float
    completeness: float


@dataclass(frozen=True)
class ClassificationResult:
    """One finished Class2D, Class3D or InitialModel job of a batch."""

    job: str  # RELION job folder, e.g. Class2D/job007/
    kind: str  # "2D" or "3D"
    batch: int
    particles: int
    pixel_size: float  # the particles' (binned) pixel size
    symmetry: str
    classes: tuple[ClassResult, ...]
    initial_model: bool = False  # an InitialModel job (its best class is the initial model)


@dataclass
class Seen:
    """What has been read before (by STAR file and its modification time), so that a look
    at an unchanged project reads nothing again."""

    stamps: dict[str, int] = field(default_factory=dict)

    def changed(self, path: Path) -> bool:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return False
        if self.stamps.get(str(path)) == stamp:
            return False
        self.stamps[str(path)] = stamp
        return True


def _read(path: Path) -> dict:
    try:
        return starfile.read(path, always_dict=True)
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def _rows(path: Path, block: str) -> list[dict]:
    table = _read(path).get(block)
    if table is None or isinstance(table, dict):
        return [table] if isinstance(table, dict) else []
    return table.to_dict("records")


def _float(value, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def movies(project: Path, jobs: dict[str, str], pickers: dict[str, str],
           cache: dict[str, MovieResult] | None = None) -> list[MovieResult]:
    """Every motion-corrected movie, with its CTF and picks where those jobs have them.
    ``jobs``: relion_it's names -> RELION jobs; ``pickers``: relion_it's name of a picking job
    -> what it picks with; ``cache``: movies read before, by micrograph (their motion
    correction does not change, so their metadata files are not read again)."""
    cache = {} if cache is None else cache
    imported = {row.get("rlnMicrographMovieName"): number for number, row in enumerate(
        _rows(project / jobs.get("import_job", "-/") / "movies.star", "movies"), start=1)}
    motion = jobs.get("motioncorr_job")
    if not motion:
        return []
    ctf = {}
    if jobs.get("ctffind_job"):
        for row in _rows(project / jobs["ctffind_job"] / "micrographs_ctf.star", "micrographs"):
            ctf[row.get("rlnMicrographName")] = CtfResult(
                _float(row.get("rlnDefocusU")), _float(row.get("rlnDefocusV")),
                _float(row.get("rlnDefocusAngle")), _float(row.get("rlnCtfMaxResolution")),
                _float(row.get("rlnCtfFigureOfMerit")),
                str(project / str(row.get("rlnCtfImage", "")).split(":")[0]))
    picks: dict[str, list[PickResult]] = {}
    for name, picker in pickers.items():
        job = jobs.get(name)
        if not job:
            continue
        for row in _rows(project / job / "summary.star", ""):
            count = int(_float(row.get("rlnGroupNrParticles"), 0))
            picks.setdefault(row.get("rlnMicrographName"), []).append(
                PickResult(picker, job, count))
    results = []
    for row in _rows(project / motion / "corrected_micrographs.star", "micrographs"):
        micrograph = row.get("rlnMicrographName")
        known = cache.get(micrograph)
        if known is not None:
            results.append(replace(known, ctf=ctf.get(micrograph),
                                   picks=tuple(picks.get(micrograph, ()))))
            continue
        metadata = _read(project / str(row.get("rlnMicrographMetadata", "")))
        general = metadata.get("general")
        if not isinstance(general, dict):
            continue  # RELION is still writing it
        name = general.get("rlnMicrographMovieName", "")
        movie = project / name
        try:
            created = dt.datetime.fromtimestamp(movie.stat().st_mtime)
            real = os.path.realpath(movie)
        except OSError:
            continue
        shifts = metadata.get("global_shift")
        drift = () if shifts is None or isinstance(shifts, dict) else tuple(
            (float(x), float(y)) for x, y in zip(shifts["rlnMicrographShiftX"],
                                                 shifts["rlnMicrographShiftY"], strict=True))
        frames = int(_float(general.get("rlnImageSizeZ"), len(drift)))
        first = int(_float(general.get("rlnMicrographStartFrame"), 1))
        results.append(MovieResult(
            number=imported.get(name, len(results) + 1), movie=real, created=created,
            frames=frames, micrograph=str(project / micrograph), first_frame=first,
            last_frame=first + max(len(drift), 1) - 1,
            dose_per_frame=_float(general.get("rlnMicrographDoseRate")),
            total_motion=_float(row.get("rlnAccumMotionTotal"), 0.0),
            early_motion=_float(row.get("rlnAccumMotionEarly"), 0.0),
            late_motion=_float(row.get("rlnAccumMotionLate"), 0.0),
            drift=drift, ctf=ctf.get(micrograph), picks=tuple(picks.get(micrograph, ())),
        ))
        cache[micrograph] = results[-1]
    return results


def classification(project: Path, job: str, kind: str, batch: int, symmetry: str,
                   *, initial_model: bool = False) -> ClassificationResult | None:
    """A finished classification job's classes (its last ``*_model.star``), or None while it
    has made none."""
    model = bt.output_model_star(project, job)
    if model is None:
        return None
    data = _read(project / model)
    general = data.get("model_general")
    table = data.get("model_classes")
    if not isinstance(general, dict) or table is None or isinstance(table, dict):
        return None
    particles_star = project / model.replace("_model.star", "_data.star")
    particles = len(_rows(particles_star, "particles"))
    classes = []
    for number, row in enumerate(table.to_dict("records"), start=1):
        image = str(row.get("rlnReferenceImage", ""))
        if "@" in image:
            index, stack = image.split("@", 1)
            image = f"{int(index)}@{project / stack}"
        else:
            image = str(project / image)
        classes.append(ClassResult(
            number, image, _float(row.get("rlnClassDistribution"), 0.0),
            _float(row.get("rlnAccuracyRotations")),
            _float(row.get("rlnAccuracyTranslationsAngst")),
            _float(row.get("rlnEstimatedResolution")),
            _float(row.get("rlnOverallFourierCompleteness"))))
    return ClassificationResult(job, kind, batch, particles,
                                _float(general.get("rlnPixelSize")), symmetry, tuple(classes),
                                initial_model)


def drift_plot(path: Path, drift: tuple[tuple[float, float], ...]) -> Path:
    """The per-frame drift as the web UIs read it (PATo reads ``data[0].x/y`` of the JSON at
    ``MotionCorrection.driftPlotFullPath``, as Diamond's services write it)."""
    xs = [x for x, _ in drift]
    ys = [y for _, y in drift]
    text = json.dumps({"data": [{"x": xs, "y": ys, "type": "scatter", "mode": "lines+markers"}],
                       "layout": {"xaxis": {"title": "x shift (pixels)"},
                                  "yaxis": {"title": "y shift (pixels)"}}})
    return replace_with(path, text, "drift plot")


@dataclass(frozen=True)
class MovieFiles:
    """The pictures made for one movie's rows (``relion_zo.images``), None where not made."""

    drift_plot: str | None = None
    snapshot: str | None = None
    ctf_image: str | None = None
    picks: tuple[tuple[str, str], ...] = ()  # (picking job, its picture)


@dataclass(frozen=True)
class InitialModelResult:
    resolution: float  # of InitialModel's best class (relion_it's choice)
    particles: int  # its share of the batch
    class3d_jobs: tuple[str, ...]  # pass 1's Class3D jobs, whose classes it is linked to


@dataclass(frozen=True)
class JobResults:
    """What one look at a project found that ISPyB does not hold yet, and what the rows need
    from the job's parameters."""

    dcid: int
    project: str
    patches: tuple[int, int]
    # CTFFIND's search (box, minres, maxres, defocus_min/max/step), the amplitude contrast and
    # the particle diameter (Å) the pickers were given
    search: dict[str, float]
    movies: tuple[tuple[MovieResult, MovieFiles], ...] = ()  # with its pictures
    classifications: tuple[tuple[ClassificationResult, int], ...] = ()  # with the class count
    initial_model: InitialModelResult | None = None

    def empty(self) -> bool:
        return not (self.movies or self.classifications or self.initial_model)


def coordinates(project: Path, job: str, micrograph: str) -> list[tuple[float, float]]:
    """A picking job's picks in a micrograph (AutoPick's, or relion_zo's crYOLO job's, file
    beside the micrograph's path: ``<job>/Movies/.../<name>_autopick.star``)."""
    rest = Path(*Path(micrograph).parts[2:])
    path = project / job / (str(rest.with_suffix("")) + "_autopick.star")
    return [(_float(r.get("rlnCoordinateX")), _float(r.get("rlnCoordinateY")))
            for r in _rows(path, "")]
