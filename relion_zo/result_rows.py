"""The statements that put a job's results (``relion_zo.results``) into ISPyB's result tables.
They never commit: ``JobManager.record_results`` runs them in one transaction of its own.

Each result is written once, however often a pass reads RELION's files, a message is
redelivered or a job is resumed (a resume is a new program of the same processing job). The
natural keys, looked up before any insert:

- ``Movie``: the data collection and the movie's path;
- ``MotionCorrection``: the movie, among the programs of this processing job;
- ``CTF``: its ``MotionCorrection``; ``ParticlePicker``: its ``MotionCorrection`` and what
  picked (``particlePickingTemplate``: LoG, crYOLO's model or the second pass's reference);
- ``ParticleClassificationGroup``: the RELION job whose classes it holds (its classes' image
  paths), among this job's programs; a batch RELION classifies again (relion_it re-runs batch 1
  while it grows) has its group and classes updated, not added;
- ``CryoemInitialModel``: one per processing job, linked to pass 1's 3D classes.
"""

from __future__ import annotations

import math

from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    CryoemInitialModel,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
)
from ispyb.sqlalchemy import (
    t_ParticleClassification_has_CryoemInitialModel as InitialModelLink,
)
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from relion_zo.latin1 import storable
from relion_zo.results import ClassificationResult, MovieFiles, MovieResult

PATH_LENGTH = 255  # the *FullPath columns


def _number(value: float | None) -> float | None:
    """A value a FLOAT column takes: no NaN or infinity (unknown is NULL)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _path(value: str | None) -> str | None:
    """A path a VARCHAR(255) latin1 column can hold whole; a longer one is left out rather
    than cut (a cut path names another file)."""
    if not value:
        return None
    text = storable(value)
    return text if len(text) <= PATH_LENGTH and text == value else None


def _like(job: str) -> str:
    """A LIKE pattern for paths inside a RELION job folder (``Class2D/job007/``: unique in its
    project; the paths may start with ``n@`` or be cut to the project-relative part)."""
    return "%" + job.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _image(path: str, project: str) -> str | None:
    """A class image's path: whole where the column holds it, else relative to the project."""
    whole = _path(path)
    if whole is not None:
        return whole
    return _path(path.replace(project.rstrip("/") + "/", "", 1))


def _programs(db: Session, program: int):
    job = select(AutoProcProgram.processingJobId).where(
        AutoProcProgram.autoProcProgramId == program).scalar_subquery()
    return select(AutoProcProgram.autoProcProgramId).where(
        AutoProcProgram.processingJobId == job)


def _key(db: Session, stmt) -> int:
    return db.execute(stmt).inserted_primary_key[0]


CHUNK = 1000  # values in one IN list or multi-row INSERT


def _chunks(items: list, size: int = CHUNK):
    for first in range(0, len(items), size):
        yield items[first:first + size]


def write_movies(db: Session, program: int, dcid: int,
                 movies: list[tuple[MovieResult, MovieFiles]], *, patches: tuple[int, int],
                 ctf_search: dict[str, float]) -> dict[str, int]:
    """The rows of ``movies`` (each with its pictures) that are not there yet, a
    handful of statements whatever their number: existing rows looked up with one IN list per
    table, new ones added with multi-row INSERTs. Returns how many of each were added."""
    added = {"Movie": 0, "MotionCorrection": 0, "CTF": 0, "ParticlePicker": 0}
    movies = [(m, files) for m, files in movies if _path(m.movie) is not None]
    if not movies:
        return added
    paths = [_path(m.movie) for m, _ in movies]

    def movie_ids() -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(paths):
            found.update(db.execute(select(Movie.movieFullPath, Movie.movieId).where(
                Movie.dataCollectionId == dcid, Movie.movieFullPath.in_(chunk))).all())
        return found

    ids = movie_ids()
    new = [dict(dataCollectionId=dcid, movieNumber=m.number, movieFullPath=path,
                createdTimeStamp=m.created, numberOfFrames=m.frames)
           for (m, _), path in zip(movies, paths, strict=True) if path not in ids]
    for chunk in _chunks(new):
        db.execute(insert(Movie), chunk)
    if new:
        added["Movie"] = len(new)
        ids = movie_ids()

    programs = _programs(db, program)

    def motion_ids() -> dict[int, int]:
        found: dict[int, int] = {}
        for chunk in _chunks(list(ids.values())):
            found.update(db.execute(select(MotionCorrection.movieId,
                                           MotionCorrection.motionCorrectionId).where(
                MotionCorrection.movieId.in_(chunk),
                MotionCorrection.autoProcProgramId.in_(programs))).all())
        return found

    motion = motion_ids()
    new = [dict(dataCollectionId=dcid, autoProcProgramId=program, movieId=ids[path],
                imageNumber=m.number, firstFrame=m.first_frame, lastFrame=m.last_frame,
                dosePerFrame=_number(m.dose_per_frame), totalMotion=_number(m.total_motion),
                averageMotionPerFrame=_number(m.average_motion_per_frame),
                micrographFullPath=_path(m.micrograph),
                micrographSnapshotFullPath=_path(files.snapshot),
                driftPlotFullPath=_path(files.drift_plot),
                patchesUsedX=patches[0], patchesUsedY=patches[1],
                comments=f"early motion {m.early_motion:.3f}, late {m.late_motion:.3f}"
                         " (RELION's rlnAccumMotionEarly/Late, pixels)")
           for (m, files), path in zip(movies, paths, strict=True) if ids[path] not in motion]
    for chunk in _chunks(new):
        db.execute(insert(MotionCorrection), chunk)
    if new:
        added["MotionCorrection"] = len(new)
        motion = motion_ids()

    mcs = {path: motion[ids[path]] for path in paths}
    with_ctf, picked = set(), set()
    for chunk in _chunks(list(mcs.values())):
        with_ctf.update(db.execute(select(CTF.motionCorrectionId).where(
            CTF.motionCorrectionId.in_(chunk))).scalars())
        picked.update(db.execute(select(ParticlePicker.firstMotionCorrectionId,
                                        ParticlePicker.particlePickingTemplate).where(
            ParticlePicker.firstMotionCorrectionId.in_(chunk))).all())
    ctfs, pickers = [], []
    for (m, files), path in zip(movies, paths, strict=True):
        mc = mcs[path]
        ctf = m.ctf
        if ctf is not None and mc not in with_ctf:
            ctfs.append(dict(
                motionCorrectionId=mc, autoProcProgramId=program,
                boxSizeX=ctf_search["box"], boxSizeY=ctf_search["box"],
                minResolution=ctf_search["minres"], maxResolution=ctf_search["maxres"],
                minDefocus=ctf_search["defocus_min"], maxDefocus=ctf_search["defocus_max"],
                defocusStepSize=ctf_search["defocus_step"],
                astigmatism=_number(ctf.astigmatism), astigmatismAngle=_number(ctf.angle),
                estimatedResolution=_number(ctf.resolution),
                estimatedDefocus=_number(ctf.defocus),
                amplitudeContrast=ctf_search["amplitude_contrast"],
                ccValue=_number(ctf.figure_of_merit),
                fftTheoreticalFullPath=_path(files.ctf_image or ctf.image)))
        for pick in m.picks:
            template = storable(pick.picker)[:PATH_LENGTH]
            if (mc, template) not in picked:
                picked.add((mc, template))
                pickers.append(dict(
                    programId=program, firstMotionCorrectionId=mc,
                    particlePickingTemplate=template,
                    particleDiameter=ctf_search["particle_diameter"],
                    numberOfParticles=pick.particles,
                    summaryImageFullPath=_path(dict(files.picks).get(pick.job))))
    for chunk in _chunks(ctfs):
        db.execute(insert(CTF), chunk)
    for chunk in _chunks(pickers):
        db.execute(insert(ParticlePicker), chunk)
    added["CTF"], added["ParticlePicker"] = len(ctfs), len(pickers)
    return added


def write_classification(db: Session, program: int, result: ClassificationResult, *,
                         classes_in_group: int, project: str) -> dict[str, int]:
    """A classification job's group and classes: added, or updated when RELION ran the job
    again on a grown batch."""
    added = {"ParticleClassificationGroup": 0, "ParticleClassification": 0}
    group = db.execute(
        select(ParticleClassificationGroup.particleClassificationGroupId)
        .join(ParticleClassification, ParticleClassification.particleClassificationGroupId
              == ParticleClassificationGroup.particleClassificationGroupId)
        .where(ParticleClassificationGroup.programId.in_(_programs(db, program)),
               ParticleClassification.classImageFullPath.like(_like(result.job)))
        .limit(1)).scalar()
    values = dict(type=result.kind, batchNumber=result.batch,
                  numberOfParticlesPerBatch=result.particles,
                  numberOfClassesPerBatch=classes_in_group, symmetry=result.symmetry,
                  binnedPixelSize=_number(result.pixel_size))
    if group is None:
        group = _key(db, insert(ParticleClassificationGroup).values(programId=program, **values))
        added["ParticleClassificationGroup"] += 1
    else:
        db.execute(update(ParticleClassificationGroup).where(
            ParticleClassificationGroup.particleClassificationGroupId == group).values(**values))
    for cls in result.classes:
        row = dict(classImageFullPath=_image(cls.image, project),
                   particlesPerClass=round(cls.distribution * result.particles),
                   rotationAccuracy=_number(cls.rotation_accuracy),
                   translationAccuracy=_number(cls.translation_accuracy),
                   estimatedResolution=_number(cls.resolution),
                   overallFourierCompleteness=_number(cls.completeness),
                   classDistribution=_number(cls.distribution))
        known = db.execute(select(ParticleClassification.particleClassificationId).where(
            ParticleClassification.particleClassificationGroupId == group,
            ParticleClassification.classNumber == cls.number)).scalar()
        if known is None:
            db.execute(insert(ParticleClassification).values(
                particleClassificationGroupId=group, classNumber=cls.number, **row))
            added["ParticleClassification"] += 1
        else:
            db.execute(update(ParticleClassification).where(
                ParticleClassification.particleClassificationId == known).values(**row))
    return added


def write_initial_model(db: Session, program: int, resolution: float, particles: int,
                        class3d_jobs: list[str], project: str) -> int:
    """The job's initial model (once), linked to the classes of pass 1's Class3D groups that
    are written so far; returns how many links were added."""
    programs = _programs(db, program)
    model = db.execute(
        select(InitialModelLink.c.cryoemInitialModelId)
        .join(ParticleClassification, ParticleClassification.particleClassificationId
              == InitialModelLink.c.particleClassificationId)
        .join(ParticleClassificationGroup,
              ParticleClassificationGroup.particleClassificationGroupId
              == ParticleClassification.particleClassificationGroupId)
        .where(ParticleClassificationGroup.programId.in_(programs)).limit(1)).scalar()
    classes = []
    for job in class3d_jobs:
        classes += db.execute(
            select(ParticleClassification.particleClassificationId)
            .join(ParticleClassificationGroup,
                  ParticleClassificationGroup.particleClassificationGroupId
                  == ParticleClassification.particleClassificationGroupId)
            .where(ParticleClassificationGroup.programId.in_(programs),
                   ParticleClassification.classImageFullPath.like(_like(job)))).scalars().all()
    if not classes:
        return 0  # linked once pass 1's first Class3D is written
    if model is None:
        model = _key(db, insert(CryoemInitialModel).values(
            resolution=_number(resolution), numberOfParticles=particles))
    linked = set(db.execute(select(InitialModelLink.c.particleClassificationId).where(
        InitialModelLink.c.cryoemInitialModelId == model)).scalars())
    new = [c for c in classes if c not in linked]
    if new:
        db.execute(insert(InitialModelLink), [
            {"cryoemInitialModelId": model, "particleClassificationId": c} for c in new])
    return len(new)
