"""ProcessingJob writes and reads: Start (with the duplicate guard) and ``load_job``.

Start checks everything first and then writes DataCollection (found or created), ProcessingJob,
its ProcessingJobParameter rows and a ProcessingJobImageSweep in one transaction. The visit's
BLSession row (or the given DataCollection row) is locked ``FOR UPDATE`` for that transaction, so
two Starts for one data collection are serialised and the second sees the first's job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from ispyb.sqlalchemy import (
    BLSession,
    DataCollection,
    DataCollectionGroup,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
)
from relion_zo import parameters as params_mod
from relion_zo import status as status_mod
from relion_zo.config import SiteConfig
from relion_zo.errors import ActiveJobError, ForeignJobError, InputError, NotFoundError
from relion_zo.parameters import ParameterError, RelionItParameters
from relion_zo import movies as movies_mod
from relion_zo import project as project_mod
from relion_zo.paths import check_shell_safe, checked_absolute, checked_relative, confine
from relion_zo.project import check_gain_reference, visit_file
from relion_zo.relion_it.stages import check_capabilities
from relion_zo.visits import Visit, find_visit, visit_by_session_id, visit_directory

log = logging.getLogger(__name__)

TEMPLATE_LENGTH = 255  # DataCollection.fileTemplate
DIRECTORY_LENGTH = 255  # DataCollection.imageDirectory
DISPLAY_NAME_LENGTH = 80  # ProcessingJob.displayName
COMMENTS_LENGTH = 255  # ProcessingJob.comments


@dataclass(frozen=True)
class StartResult:
    processing_job_id: int
    data_collection_id: int
    created_data_collection: bool
    movies: int
    # True when no job was written: the data collection's job was submitted before with the
    # same parameters and never picked up (its message was lost), so it is to be sent again.
    resend: bool = False


@dataclass(frozen=True)
class JobSpec:
    """Everything the wrapper needs about one processing job, typed."""

    processing_job_id: int
    data_collection_id: int
    recipe: str
    visit: Visit
    visit_directory: Path
    image_directory: Path
    file_template: str
    parameters: RelionItParameters
    raw_parameters: tuple[tuple[str, str], ...]


def _norm_dir(path: Path) -> str:
    return str(path).rstrip("/") + "/"


def check_movies_folder(config: SiteConfig, visit_dir: Path, image_directory: str | Path) -> Path:
    """The raw folder: absolute, existing, inside the data roots and the visit."""
    folder = checked_absolute(image_directory, "image directory")
    if len(_norm_dir(folder).encode("utf-8", "surrogateescape")) > DIRECTORY_LENGTH:
        raise InputError(f"image directory is longer than {DIRECTORY_LENGTH} characters")
    if not folder.is_dir():
        raise InputError(f"image directory {folder} does not exist or is not a folder")
    confine(folder, config.data_roots, "image directory")
    confine(folder, [visit_dir], "image directory")
    return folder


def check_template(template: str) -> str:
    checked_relative(template, "file template")
    if len(template) > TEMPLATE_LENGTH:
        raise InputError(f"file template is longer than {TEMPLATE_LENGTH} characters")
    if not template.lower().endswith(params_mod.MOVIE_SUFFIXES):
        raise InputError(
            f"file template {template!r} must end in a movie suffix "
            f"({', '.join(params_mod.MOVIE_SUFFIXES)})"
        )
    return check_shell_safe(template, "file template", glob=True)


def check_movies(
    config: SiteConfig, visit_dir: Path, image_directory: str | Path, template: str,
    import_images: str | None = None,
) -> tuple[Path, int]:
    """Check a raw folder, its file template and the movies that ``import_images`` (default:
    the template) matches now; returns (folder, number of movies)."""
    folder = check_movies_folder(config, visit_dir, image_directory)
    check_template(template)
    inside = project_mod.movies_glob(import_images, folder, template)
    inside = inside.removeprefix(project_mod.MOVIES_LINK + "/")
    names = movies_mod.matching(folder, inside)
    if not names:
        what = "parameter import_images" if import_images else "file template"
        raise InputError(f"{what} {inside!r} matches no file in {folder}")
    movies_mod.check_all(folder, names, [visit_dir])
    return folder, len(names)


def check_parameters_on_disk(params: RelionItParameters, visit_dir: Path) -> None:
    """Files the parameters name must exist inside the visit; the gain must read as MRC."""
    checks = (
        ("motioncor_gainreference", check_gain_reference),
        ("motioncor_defectfile", lambda value, visit: visit_file(value, visit, "defect file")),
    )
    for key, check in checks:
        value = getattr(params, key)
        if value:
            try:
                check(value, visit_dir)
            except InputError as exc:
                raise ParameterError(key, str(exc)) from None


def _lock_session(db: Session, session_id: int) -> None:
    db.execute(
        select(BLSession.sessionId).where(BLSession.sessionId == session_id).with_for_update()
    )


def _find_data_collection(db: Session, session_id: int, folder: Path, template: str) -> int | None:
    plain = str(folder).rstrip("/")
    return db.execute(
        select(DataCollection.dataCollectionId)
        .where(
            DataCollection.SESSIONID == session_id,
            or_(DataCollection.imageDirectory == plain, DataCollection.imageDirectory == plain + "/"),
            DataCollection.fileTemplate == template,
        )
        .order_by(DataCollection.dataCollectionId.desc())
        .limit(1)
    ).scalar()


def _create_data_collection(db: Session, session_id: int, folder: Path, template: str) -> int:
    now = dt.datetime.now()
    dcg = db.execute(
        insert(DataCollectionGroup).values(
            sessionId=session_id, experimentType="EM", startTime=now
        )
    ).inserted_primary_key[0]
    suffix = Path(template).suffix.lstrip(".")
    return db.execute(
        insert(DataCollection).values(
            dataCollectionGroupId=dcg,
            SESSIONID=session_id,
            imageDirectory=_norm_dir(folder),
            fileTemplate=template,
            imageSuffix=suffix,
            startTime=now,
            runStatus="DataCollection Successful",
        )
    ).inserted_primary_key[0]


def data_collection_exists(db: Session, dcid: int) -> None:
    """Raise ``NotFoundError`` for an unknown data collection id."""
    found = db.execute(
        select(DataCollection.dataCollectionId).where(DataCollection.dataCollectionId == dcid)
    ).first()
    if found is None:
        raise NotFoundError(f"unknown data collection {dcid}")


def _data_collection_row(db: Session, dcid: int, *, lock: bool = False):
    stmt = select(
        DataCollection.dataCollectionId,
        DataCollection.SESSIONID,
        DataCollection.imageDirectory,
        DataCollection.fileTemplate,
    ).where(DataCollection.dataCollectionId == dcid)
    if lock:
        stmt = stmt.with_for_update()
    row = db.execute(stmt).first()
    if row is None:
        raise NotFoundError(f"unknown data collection {dcid}")
    if row.SESSIONID is None:
        raise InputError(f"data collection {dcid} belongs to no visit")
    if not row.imageDirectory or not row.fileTemplate:
        raise InputError(f"data collection {dcid} has no image directory or file template")
    return row


def start_job(
    db: Session,
    config: SiteConfig,
    parameters: Iterable[tuple[str, Any]] | Mapping[str, Any],
    *,
    visit: str | None = None,
    image_directory: str | Path | None = None,
    file_template: str | None = None,
    data_collection_id: int | None = None,
    display_name: str | None = None,
    comments: str | None = None,
    automatic: bool = False,
    resend_submitted: bool = False,
) -> StartResult:
    """Check everything, then write the job in one transaction and commit it.

    Either ``data_collection_id`` or all of ``visit``, ``image_directory`` and ``file_template``.
    Raises a ``RelionZoError`` and writes nothing when any check fails. ``resend_submitted``:
    when the data collection's active job is still ``submitted`` with the same parameters (its
    message was never delivered), write nothing and return it with ``resend`` set.
    """
    typed = params_mod.parse(parameters)
    check_capabilities(typed, config)
    if display_name is not None and len(display_name) > DISPLAY_NAME_LENGTH:
        raise InputError(f"display name is longer than {DISPLAY_NAME_LENGTH} characters")
    if comments is not None and len(comments) > COMMENTS_LENGTH:
        raise InputError(f"comments are longer than {COMMENTS_LENGTH} characters")
    try:
        if data_collection_id is not None:
            if visit or image_directory or file_template:
                raise InputError("give either a data collection id or visit, folder and template")
            row = _data_collection_row(db, data_collection_id, lock=True)
            the_visit = visit_by_session_id(db, row.SESSIONID)
            folder_text, template = row.imageDirectory, row.fileTemplate
        else:
            missing = [
                name
                for name, value in (
                    ("visit", visit),
                    ("image directory", image_directory),
                    ("file template", file_template),
                )
                if not value
            ]
            if missing:
                raise InputError(f"Start needs {', '.join(missing)} (or a data collection id)")
            the_visit = find_visit(db, visit)
            folder_text, template = image_directory, file_template
        visit_dir = visit_directory(config, the_visit)
        folder, movies = check_movies(config, visit_dir, folder_text, template,
                                      typed.import_images)
        check_parameters_on_disk(typed, visit_dir)

        created = False
        if data_collection_id is None:
            _lock_session(db, the_visit.session_id)
            data_collection_id = _find_data_collection(db, the_visit.session_id, folder, template)
            if data_collection_id is None:
                data_collection_id = _create_data_collection(
                    db, the_visit.session_id, folder, template
                )
                created = True
            else:
                _data_collection_row(db, data_collection_id, lock=True)

        active = status_mod.active_jobs(
            db, data_collection_id, stale_seconds=config.stale_seconds
        )
        if active:
            first = active[0]
            if (resend_submitted and first.state == "submitted"
                    and stored_items(db, first.processing_job_id)
                    == params_mod.explicit_items(typed)):
                db.rollback()
                return StartResult(first.processing_job_id, data_collection_id, False, movies,
                                   resend=True)
            raise ActiveJobError(data_collection_id, first.processing_job_id, first.state)

        pjid = db.execute(
            insert(ProcessingJob).values(
                dataCollectionId=data_collection_id,
                displayName=display_name or "RELION",
                comments=comments or None,
                recipe=status_mod.RECIPE,
                automatic=1 if automatic else 0,
            )
        ).inserted_primary_key[0]
        # The run will create this folder; refuse now what it would refuse then.
        project_mod.check_new_project(
            project_mod.project_directory(config, visit_dir, pjid))
        rows = params_mod.explicit_items(typed)
        db.execute(
            insert(ProcessingJobParameter),
            [{"processingJobId": pjid, "parameterKey": k, "parameterValue": v} for k, v in rows],
        )
        db.execute(
            insert(ProcessingJobImageSweep).values(
                processingJobId=pjid,
                dataCollectionId=data_collection_id,
                startImage=1,
                endImage=movies,
            )
        )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    log.info("processing job %s written for data collection %s", pjid, data_collection_id)
    return StartResult(pjid, data_collection_id, created, movies)


def stored_items(db: Session, processing_job_id: int) -> list[tuple[str, str]]:
    """A job's parameter rows as (key, value), in the order they were written."""
    return [tuple(row) for row in db.execute(
        select(ProcessingJobParameter.parameterKey, ProcessingJobParameter.parameterValue)
        .where(ProcessingJobParameter.processingJobId == processing_job_id)
        .order_by(ProcessingJobParameter.processingJobParameterId)
    ).all()]


def load_job(db: Session, config: SiteConfig, processing_job_id: int) -> JobSpec:
    """Read and type one job; an unknown id or bad stored parameters raise a clear error."""
    job = db.execute(
        select(ProcessingJob.processingJobId, ProcessingJob.dataCollectionId, ProcessingJob.recipe)
        .where(ProcessingJob.processingJobId == processing_job_id)
    ).first()
    if job is None:
        raise NotFoundError(f"unknown processing job {processing_job_id}")
    if job.recipe != status_mod.RECIPE:
        raise ForeignJobError(
            f"processing job {processing_job_id} has recipe {job.recipe!r}, not {status_mod.RECIPE!r}"
        )
    if job.dataCollectionId is None:
        raise InputError(f"processing job {processing_job_id} has no data collection")
    dc = _data_collection_row(db, job.dataCollectionId)
    raw = tuple(stored_items(db, processing_job_id))
    typed = params_mod.parse(raw)
    the_visit = visit_by_session_id(db, dc.SESSIONID)
    return JobSpec(
        processing_job_id=processing_job_id,
        data_collection_id=dc.dataCollectionId,
        recipe=job.recipe,
        visit=the_visit,
        visit_directory=visit_directory(config, the_visit),
        image_directory=Path(dc.imageDirectory.rstrip("/") or "/"),
        file_template=dc.fileTemplate,
        parameters=typed,
        raw_parameters=raw,
    )
