"""ProcessingJob writes and reads: Start (with the duplicate guard) and ``load_job``.

Start checks everything first (``plan_start``: reads, no locks), then writes DataCollection
(found or created), ProcessingJob, its ProcessingJobParameter rows and a
ProcessingJobImageSweep in one short transaction (``write_start``). It locks only what its rule
needs: the DataCollection row ``FOR UPDATE``, so two Starts for one data collection are
serialised and the second sees the first's job; and, to create a data collection, a MariaDB
named lock (``GET_LOCK``) scoped to the visit, folder and template, so one is never created
twice. Starts for different data collections of a visit wait for neither. A lock wait timeout
(1205), a deadlock (1213) or a lost connection makes the whole Start run again
(``relion_zo.retry``), so concurrent Starts for one data collection end in exactly one job and
``ActiveJobError`` for every other one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ispyb.sqlalchemy import (
    DataCollection,
    DataCollectionGroup,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
)
from sqlalchemy import Connection, func, insert, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from relion_zo import movies as movies_mod
from relion_zo import parameters as params_mod
from relion_zo import project as project_mod
from relion_zo import retry as retry_mod
from relion_zo import status as status_mod
from relion_zo.config import SiteConfig
from relion_zo.errors import ActiveJobError, ForeignJobError, InputError, NotFoundError
from relion_zo.latin1 import describe, unstorable
from relion_zo.parameters import ParameterError, RelionItParameters
from relion_zo.paths import check_shell_safe, checked_absolute, checked_relative, confine
from relion_zo.programs import STOP_KEY
from relion_zo.project import check_gain_reference, visit_file
from relion_zo.relion_it.stages import check_capabilities
from relion_zo.visits import Visit, find_visit, visit_by_session_id, visit_directory

log = logging.getLogger(__name__)

TEMPLATE_LENGTH = 255  # DataCollection.fileTemplate
DIRECTORY_LENGTH = 255  # DataCollection.imageDirectory
DISPLAY_NAME_LENGTH = 80  # ProcessingJob.displayName
COMMENTS_LENGTH = 255  # ProcessingJob.comments
# How long a Start keeps trying through lock waits, deadlocks and a lost connection. A person
# (or a web UI) is waiting for the answer; a lock is normally held for milliseconds.
START_RETRY_SECONDS = 60.0
LOCK_WAIT_TIMEOUT = 1205  # MariaDB's error number, also given to a named lock's timeout
_HELD_LOCKS = "relion_zo.jobs.held_locks"  # Session.info key: named locks to release


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


def _find_data_collection(db: Session, session_id: int, folder: Path, template: str) -> int | None:
    """The newest data collection of the visit with this folder and template, or None.

    ``MAX()``, not ``ORDER BY dataCollectionId DESC LIMIT 1``: with the LIMIT, MariaDB may walk
    the primary key backwards from the newest row of the whole table until a row matches, and
    for a data collection that does not exist yet (every Start of a new one) that is every row
    of DataCollection. With ``MAX()`` it reads the rows of the folder (index
    ``DataCollection_FKIndexImageDirectory``) or of the visit (``DataCollection_FKIndex00``),
    whichever it expects fewer of; ISPyB has no index on ``fileTemplate`` (a facility whose data
    collections share folders can add ``sql/optional_indexes.sql``; docs/performance.md)."""
    plain = str(folder).rstrip("/")
    return db.execute(
        select(func.max(DataCollection.dataCollectionId))
        .where(
            DataCollection.SESSIONID == session_id,
            or_(DataCollection.imageDirectory == plain,
                DataCollection.imageDirectory == plain + "/"),
            DataCollection.fileTemplate == template,
        )
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


@dataclass(frozen=True)
class StartPlan:
    """What a Start's checks found, before anything is locked or written."""

    parameters: RelionItParameters
    visit: Visit
    folder: Path
    file_template: str
    movies: int
    visit_directory: Path
    # Given, or found without a lock; None when the data collection is still to be created.
    data_collection_id: int | None
    display_name: str | None = None
    comments: str | None = None
    automatic: bool = False


class _LockWait(Exception):
    """What a named lock's timeout carries: MariaDB's own number for a lock wait timeout."""


def folder_lock_name(session_id: int, folder: Path, template: str) -> str:
    """The ``GET_LOCK`` name that guards creating the data collection of one visit's folder and
    template: scoped to them, so Starts for other data collections never wait for it.
    (MariaDB allows 64 characters.)"""
    digest = hashlib.sha256(f"{_norm_dir(folder)}\0{template}".encode("utf-8", "surrogateescape"))
    return f"relion_zo.dc.{session_id}.{digest.hexdigest()[:32]}"


def _lock_folder(db: Session, name: str) -> None:
    """Take the named lock until the transaction has ended.

    A named lock belongs to the connection, not to the transaction, and must outlive the commit
    (a second Start must find the committed data collection). A pooled connection is detached
    first, so that ending the transaction closes it and the server drops the lock then; on a
    connection the caller owns (a session bound to one) ``release_folder_locks`` releases it."""
    conn = db.connection()
    if isinstance(db.get_bind(), Connection):
        db.info.setdefault(_HELD_LOCKS, []).append(name)
    else:
        conn.detach()
    got = db.execute(text("SELECT GET_LOCK(:name, @@innodb_lock_wait_timeout)"),
                     {"name": name}).scalar()
    if got != 1:  # 0: timed out, NULL: an error; either way a wait to try again, like 1205
        raise OperationalError(f"GET_LOCK({name!r})", None,
                               _LockWait(LOCK_WAIT_TIMEOUT, "named lock wait timeout exceeded"))


def release_folder_locks(db: Session) -> None:
    """Release the named locks a Start took on a connection the caller owns (a session bound to
    a connection), once its transaction has ended; a pooled connection dropped them on closing."""
    names = db.info.pop(_HELD_LOCKS, [])
    bind = db.get_bind()
    if names and isinstance(bind, Connection) and not bind.closed:
        for name in names:
            bind.execute(text("DO RELEASE_LOCK(:name)"), {"name": name})


def check_storable(items: list[tuple[Any, Any]], **fields: Any) -> None:
    """Refuse, naming the field, text that ISPyB's latin1 columns cannot hold (``latin1``)."""
    named = [(f"parameter {key}", value) for key, value in items if isinstance(value, str)]
    named += [(f"parameter key {key!r}"[:60], key) for key, _ in items if isinstance(key, str)]
    named += [(name.replace("_", " "), str(value)) for name, value in fields.items()
              if value is not None]
    for field, value in named:
        char = unstorable(value)
        if char is not None:
            raise InputError(f"{field}: contains {describe(char)}, which ISPyB's latin1 "
                             "columns cannot store; use Latin-1 characters only")


def plan_start(
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
) -> StartPlan:
    """Every check of a Start: parameters, names, the visit, the folder, its movies and the
    files the parameters name. Reads without locking anything and writes nothing; raises a
    ``RelionZoError`` naming what is wrong."""
    items = list(parameters.items()) if isinstance(parameters, Mapping) else list(parameters)
    check_storable(items, visit=visit, image_directory=image_directory,
                   file_template=file_template, display_name=display_name, comments=comments)
    typed = params_mod.parse(items, config.relion_it_defaults)
    check_capabilities(typed, config)
    if display_name is not None and len(display_name) > DISPLAY_NAME_LENGTH:
        raise InputError(f"display name is longer than {DISPLAY_NAME_LENGTH} characters")
    if comments is not None and len(comments) > COMMENTS_LENGTH:
        raise InputError(f"comments are longer than {COMMENTS_LENGTH} characters")
    if data_collection_id is not None:
        if visit or image_directory or file_template:
            raise InputError("give either a data collection id or visit, folder and template")
        row = _data_collection_row(db, data_collection_id)
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
    folder, movies = check_movies(config, visit_dir, folder_text, template, typed.import_images)
    check_parameters_on_disk(typed, visit_dir)
    if data_collection_id is None:
        data_collection_id = _find_data_collection(db, the_visit.session_id, folder, template)
    return StartPlan(typed, the_visit, folder, template, movies, visit_dir, data_collection_id,
                     display_name, comments, automatic)


def _guard(
    db: Session, config: SiteConfig, plan: StartPlan, dcid: int, resend_submitted: bool
) -> StartResult | None:
    """The duplicate guard: ``ActiveJobError`` while the data collection has an active job,
    a resend answer for a same-parameters job that was never picked up, else None."""
    active = status_mod.active_jobs(db, dcid, stale_seconds=config.stale_seconds)
    if not active:
        return None
    first = active[0]
    if (resend_submitted and first.state == "submitted"
            and stored_items(db, first.processing_job_id)
            == params_mod.explicit_items(plan.parameters)):
        return StartResult(first.processing_job_id, dcid, False, plan.movies, resend=True)
    raise ActiveJobError(dcid, first.processing_job_id, first.state)


def write_start(
    db: Session, config: SiteConfig, plan: StartPlan, *, resend_submitted: bool = False
) -> StartResult:
    """The locked part of a Start: lock the data collection (creating it when the plan found
    none), apply the duplicate guard, write the job. Neither commits nor rolls back: that is
    the caller's (``start_job``) to do, and the locks last until it has (then
    ``release_folder_locks``).

    Locks are as narrow as the rule they keep: the DataCollection row ``FOR UPDATE`` (two
    Starts for one data collection are serialised; the second sees the first's job, with READ
    COMMITTED as ``db.make_engine`` sets it), and, only to create a data collection, a named
    lock for that visit, folder and template. Starts for other data collections of the visit
    wait for neither."""
    created = False
    dcid = plan.data_collection_id
    if dcid is None:
        session_id = plan.visit.session_id
        _lock_folder(db, folder_lock_name(session_id, plan.folder, plan.file_template))
        dcid = _find_data_collection(db, session_id, plan.folder, plan.file_template)
        if dcid is None:
            dcid = _create_data_collection(db, session_id, plan.folder, plan.file_template)
            created = True
    if not created:
        _data_collection_row(db, dcid, lock=True)
    resend = _guard(db, config, plan, dcid, resend_submitted)
    if resend is not None:
        return resend

    pjid = db.execute(
        insert(ProcessingJob).values(
            dataCollectionId=dcid,
            displayName=plan.display_name or "RELION",
            comments=plan.comments or None,
            recipe=status_mod.RECIPE,
            automatic=1 if plan.automatic else 0,
        )
    ).inserted_primary_key[0]
    # The run will create this folder; refuse now what it would refuse then.
    project_mod.check_new_project(project_mod.project_directory(config, plan.visit_directory, pjid))
    rows = params_mod.explicit_items(plan.parameters)
    db.execute(
        insert(ProcessingJobParameter),
        [{"processingJobId": pjid, "parameterKey": k, "parameterValue": v} for k, v in rows],
    )
    db.execute(
        insert(ProcessingJobImageSweep).values(
            processingJobId=pjid,
            dataCollectionId=dcid,
            startImage=1,
            endImage=plan.movies,
        )
    )
    return StartResult(pjid, dcid, created, plan.movies)


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
    retry_seconds: float = START_RETRY_SECONDS,
) -> StartResult:
    """Check everything, then write the job in one short transaction and commit it.

    Either ``data_collection_id`` or all of ``visit``, ``image_directory`` and ``file_template``.
    Raises a ``RelionZoError`` and writes nothing when any check fails, ``ActiveJobError`` when
    the data collection already has an active job. ``resend_submitted``: when that job is still
    ``submitted`` with the same parameters (its message was never delivered), write nothing and
    return it with ``resend`` set. A lock wait that times out, a deadlock or a lost connection
    ends the transaction and the whole Start is tried again (``relion_zo.retry``) for up to
    ``retry_seconds``, so concurrent Starts end in exactly one job and the "already active"
    answer for the others.
    """

    def attempt() -> StartResult:
        try:
            plan = plan_start(
                db, config, parameters, visit=visit, image_directory=image_directory,
                file_template=file_template, data_collection_id=data_collection_id,
                display_name=display_name, comments=comments, automatic=automatic,
            )
            if plan.data_collection_id is not None:
                # Unlocked first look: once the job is committed, most concurrent Starts
                # answer here without queueing for the row lock. The locked look decides.
                resend = _guard(db, config, plan, plan.data_collection_id, resend_submitted)
                if resend is not None:
                    db.rollback()
                    return resend
            result = write_start(db, config, plan, resend_submitted=resend_submitted)
            if result.resend:
                db.rollback()
            else:
                db.commit()
            return result
        except BaseException:
            db.rollback()
            raise
        finally:
            release_folder_locks(db)

    result = retry_mod.retrying(attempt, "Start", retry_seconds)
    if not result.resend:
        log.info("processing job %s written for data collection %s",
                 result.processing_job_id, result.data_collection_id)
    return result


def stored_items(db: Session, processing_job_id: int) -> list[tuple[str, str]]:
    """A job's parameter rows as (key, value), in the order they were written; a stop request
    (``programs.STOP_KEY``) is a record about the job, not a parameter."""
    return [tuple(row) for row in db.execute(
        select(ProcessingJobParameter.parameterKey, ProcessingJobParameter.parameterValue)
        .where(ProcessingJobParameter.processingJobId == processing_job_id,
               ProcessingJobParameter.parameterKey != STOP_KEY)
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
    typed = params_mod.parse(raw, config.relion_it_defaults)
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
