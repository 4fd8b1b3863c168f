"""Reading what relion_it 3.1's batch loop reads: the split job's batch files and the model
STAR files of InitialModel and Class3D (``find_split_job_output``, ``findOutputModelStar`` and
``findBestClass`` in its ``relion_it.py``). Plain functions over files; no RELION process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relion_zo.paths import unsafe_reason
from relion_zo.relion_it import pipeliner as pl

SECOND_PASS_FILE = "RELION_IT_2NDPASS_3DREF"  # pass 1's best class: the second pass has begun
SPLIT_PREFIX = "particles_split"
SPLIT_MAX_DIGITS = 6  # relion_it tries the batch number zero-padded to widths 0..5


def batch_file(project: Path, split_job: str, number: int) -> str | None:
    """Batch ``number``'s file (project-relative), as relion_it finds it: the number padded
    with zeros to widths 0 to 5 (RELION writes ``particles_split001.star``)."""
    for width in range(SPLIT_MAX_DIGITS):
        name = f"{split_job}{SPLIT_PREFIX}{str(number).rjust(width, '0')}.star"
        if (project / name).is_file():
            return name
    return None


def batch_count(project: Path, split_job: str) -> int:
    """How many batch files the split job has written (relion_it counts them with a glob)."""
    folder = project / split_job
    if not folder.is_dir():
        return 0
    return sum(1 for path in folder.glob(f"{SPLIT_PREFIX}*.star"))


def batch_size(project: Path, name: str) -> int:
    """Particles in a batch file (rows of its ``particles`` block)."""
    return pl.star_count(project / name, "particles")


def output_model_star(project: Path, job: str) -> str | None:
    """The ``*_model.star`` among a job's output nodes (its ``job_pipeline.star``), or None
    while the job has made none."""
    for node in pl.star_column(project / job / "job_pipeline.star", "pipeline_output_edges",
                               "_rlnPipeLineEdgeToNode"):
        if node.endswith("_model.star"):
            return node
    return None


@dataclass(frozen=True)
class BestClass:
    map: str  # the class's map, project-relative (rlnReferenceImage)
    resolution: float  # Å (rlnEstimatedResolution)
    distribution: float  # fraction of particles (rlnClassDistribution)
    angpix: str  # the model's pixel size (rlnPixelSize), as written there


def best_class(project: Path, model_star: str) -> BestClass | None:
    """relion_it's best class (``use_resol=True``): the lowest estimated resolution; of equal
    ones, the larger class. None when the file has no classes."""
    path = project / model_star
    maps = pl.star_column(path, "model_classes", "_rlnReferenceImage")
    resolutions = pl.star_column(path, "model_classes", "_rlnEstimatedResolution")
    distributions = pl.star_column(path, "model_classes", "_rlnClassDistribution")
    angpix = pl.star_value(path, "model_general", "_rlnPixelSize")
    if not maps or len(maps) != len(resolutions) or len(maps) != len(distributions):
        return None
    best: BestClass | None = None
    for name, res, dist in zip(maps, resolutions, distributions, strict=True):
        candidate = BestClass(name, float(res), float(dist), angpix or "")
        if best is None or (candidate.resolution, -candidate.distribution) < (
                best.resolution, -best.distribution):
            best = candidate
    return best


@dataclass(frozen=True)
class Reference:
    """Pass 1's best 3D class, the second pass's picking reference: what relion_it records in
    ``RELION_IT_2NDPASS_3DREF`` (the map, project-relative, and its pixel size as the model
    STAR file gives it)."""

    map: str
    angpix: str


def reference_text(reference: Reference) -> str:
    return f"{reference.map}\n{reference.angpix}\n"


def read_reference(project: Path) -> Reference | None:
    """``RELION_IT_2NDPASS_3DREF`` (relion_it's ``getSecondPassReference``), or None when the
    second pass has not begun. Its map goes into RELION's commands, so it must be a safe name
    of a file inside the project, and its pixel size a positive number; anything else raises
    ``ValueError`` saying what is wrong."""
    path = project / SECOND_PASS_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{SECOND_PASS_FILE} cannot be read: {exc}") from None
    if len(lines) != 2:
        raise ValueError(f"{SECOND_PASS_FILE} must hold two lines (the map and its pixel size)")
    name, angpix = lines[0].strip(), lines[1].strip()
    reason = unsafe_reason(name) if name else "is empty"
    if reason is None and (name.startswith("/") or ".." in name.split("/")):
        reason = "must be a file inside the project"
    if reason is None and not (project / name).resolve().is_relative_to(project.resolve()):
        reason = "must be a file inside the project"
    if reason is None and not (project / name).is_file():
        reason = "does not exist"
    if reason:
        raise ValueError(f"{SECOND_PASS_FILE}: the map {name[:80]!r} {reason}")
    try:
        value = float(angpix)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{SECOND_PASS_FILE}: the pixel size {angpix[:40]!r} is not a positive "
                         "number")
    return Reference(name, angpix)
