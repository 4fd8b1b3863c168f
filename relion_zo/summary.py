"""A processing job's results in a few numbers, from ISPyB's result tables (what
``relion_zo.result_rows`` wrote) and the data collection's folder: what ``relion-zo status
--job N`` prints. Three statements, whatever the number of movies."""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relion_zo.movies import matching


@dataclass(frozen=True)
class JobSummary:
    processing_job_id: int
    movies: int  # motion-corrected
    motion_mean: float | None  # totalMotion, the movie's pixels
    motion_p95: float | None
    ctf: int  # movies with a CTF estimate
    defocus_min: float | None  # Å
    defocus_max: float | None
    ctf_resolution_median: float | None  # Å
    particles: dict[str, int]  # what picked -> particles
    classes_2d: int
    classes_3d: int
    newest_processed: dt.datetime | None  # the newest processed movie's file time
    newest_on_disk: dt.datetime | None
    lag_seconds: float | None  # newest on disk - newest processed

    def as_json(self) -> dict:
        data = asdict(self)
        for key in ("newest_processed", "newest_on_disk"):
            data[key] = data[key].isoformat(sep=" ") if data[key] else None
        return data

    def text(self) -> str:
        def number(value: float | None, digits: int = 1) -> str:
            return "-" if value is None else f"{value:,.{digits}f}"

        picked = ", ".join(f"{n:,} ({what})" for what, n in self.particles.items()) or "0"
        lines = [
            f"movies      {self.movies:,} motion-corrected; motion mean "
            f"{number(self.motion_mean, 2)}, 95th percentile {number(self.motion_p95, 2)} "
            "pixels",
            f"CTF         {self.ctf:,}; defocus {number(self.defocus_min, 0)} to "
            f"{number(self.defocus_max, 0)} Å; median resolution "
            f"{number(self.ctf_resolution_median)} Å",
            f"particles   {picked}",
            f"classes     {self.classes_2d} 2D, {self.classes_3d} 3D",
            f"lag         {number(self.lag_seconds, 0)} s between the newest movie on disk and "
            "the newest processed",
        ]
        return "\n".join(lines)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def job_summary(db: Session, processing_job_id: int, movie_folder: Path | None = None,
                movie_glob: str | None = None) -> JobSummary:
    """The job's numbers; the lag needs its raw folder and file template (None: not given)."""
    programs = select(AutoProcProgram.autoProcProgramId).where(
        AutoProcProgram.processingJobId == processing_job_id).scalar_subquery()
    rows = db.execute(
        select(MotionCorrection.totalMotion, Movie.createdTimeStamp, CTF.estimatedDefocus,
               CTF.estimatedResolution)
        .join(Movie, Movie.movieId == MotionCorrection.movieId)
        .join(CTF, CTF.motionCorrectionId == MotionCorrection.motionCorrectionId, isouter=True)
        .where(MotionCorrection.autoProcProgramId.in_(programs))).all()
    picks = db.execute(
        select(ParticlePicker.particlePickingTemplate, func.sum(ParticlePicker.numberOfParticles))
        .where(ParticlePicker.programId.in_(programs))
        .group_by(ParticlePicker.particlePickingTemplate)).all()
    classes = dict(db.execute(
        select(ParticleClassificationGroup.type, func.count())
        .join(ParticleClassification, ParticleClassification.particleClassificationGroupId
              == ParticleClassificationGroup.particleClassificationGroupId)
        .where(ParticleClassificationGroup.programId.in_(programs))
        .group_by(ParticleClassificationGroup.type)).all())
    motion = [r.totalMotion for r in rows if r.totalMotion is not None]
    defocus = [r.estimatedDefocus for r in rows if r.estimatedDefocus is not None]
    resolution = [r.estimatedResolution for r in rows if r.estimatedResolution is not None]
    processed = max((r.createdTimeStamp for r in rows if r.createdTimeStamp), default=None)
    on_disk = None
    if movie_folder is not None and movie_glob:
        times = []
        for name in matching(movie_folder, movie_glob):
            try:
                times.append((movie_folder / name).stat().st_mtime)
            except OSError:
                continue
        on_disk = dt.datetime.fromtimestamp(max(times)).replace(microsecond=0) if times else None
    lag = None
    if on_disk is not None:
        lag = max(0.0, (on_disk - processed).total_seconds()) if processed else None
    return JobSummary(
        processing_job_id=processing_job_id, movies=len(rows),
        motion_mean=statistics.fmean(motion) if motion else None,
        motion_p95=_percentile(motion, 0.95), ctf=len(defocus),
        defocus_min=min(defocus, default=None), defocus_max=max(defocus, default=None),
        ctf_resolution_median=statistics.median(resolution) if resolution else None,
        particles={str(template): int(n or 0) for template, n in picks},
        classes_2d=int(classes.get("2D", 0)), classes_3d=int(classes.get("3D", 0)),
        newest_processed=processed, newest_on_disk=on_disk, lag_seconds=lag)
