"""AutoProcProgram statements, following ISPyB's own rules (``upsert_processing_program_v2``).

- the start time is set once;
- while a job runs, every update sets ``processingEndTime`` to now: it is the heartbeat;
- a final status (0 or 1) is written once and never changed: every update below is guarded by
  ``processingStatus IS NULL``, so a late heartbeat or a second finish changes nothing.

Text is made storable in ISPyB's latin1 columns first (``relion_zo.latin1``). A failure's
reason goes into an AutoProcProgramMessage row through ISPyB's procedure
``upsert_processing_program_message`` (ISPyB's processing role may not insert into that table);
a stop request is a ProcessingJobParameter row (``STOP_KEY``), the one per-job table both of
ISPyB's roles may insert into.

Times are the database's ``NOW()``, the same clock the status rules compare against. Only the
columns named here are touched, so a database without ``AutoProcProgram.jobUuid`` (schema 5.0)
works too. These functions run inside the caller's transaction and never commit or roll back:
``relion_zo.manager.JobManager`` owns the transactions and decides the transitions.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ispyb.sqlalchemy import (
    AutoProcProgram,
    AutoProcProgramAttachment,
    ProcessingJob,
    ProcessingJobParameter,
)
from sqlalchemy import func, insert, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from relion_zo.latin1 import storable
from relion_zo.status import STOPPED_PREFIX

log = logging.getLogger(__name__)

MESSAGE_LENGTH = 255  # AutoProcProgram.processingMessage
PROGRAMS_LENGTH = 255
COMMAND_LENGTH = 255
ENVIRONMENT_LENGTH = 255
NOTE_LENGTH = 200  # AutoProcProgramMessage.message
FILE_TYPES = ("Log", "Result", "Graph", "Debug", "Input")
SEVERITIES = ("ERROR", "WARNING", "INFO")


def clip(text: str | None, length: int) -> str | None:
    """One line of at most ``length`` characters that a latin1 column can hold."""
    if text is None:
        return None
    text = storable(" ".join(str(text).split()))
    return text if len(text) <= length else text[: length - 1] + "…"


def _execute(db: Session, stmt, *, key: bool = False) -> int:
    """Run one statement in the caller's transaction; the row count, or the new key if ``key``."""
    result = db.execute(stmt)
    return result.inserted_primary_key[0] if key else result.rowcount


def _new_program(
    processing_job_id: int,
    programs: str,
    command_line: str | None,
    environment: str | None,
    message: str | None = None,
):
    return insert(AutoProcProgram).values(
        processingJobId=processing_job_id,
        processingPrograms=clip(programs, PROGRAMS_LENGTH),
        processingCommandLine=clip(command_line, COMMAND_LENGTH),
        processingEnvironment=clip(environment, ENVIRONMENT_LENGTH),
        processingMessage=clip(message, MESSAGE_LENGTH),
        recordTimeStamp=func.now(),
    )


def register(
    db: Session,
    processing_job_id: int,
    *,
    programs: str = "RELION",
    command_line: str | None = None,
    environment: str | None = None,
    message: str | None = None,
) -> int:
    """A new program for a job: queued (no start time, no status). Returns its id."""
    return _execute(
        db,
        _new_program(processing_job_id, programs, command_line, environment, message),
        key=True,
    )


def mark_running(
    db: Session, program_id: int, message: str | None = "running",
    environment: str | None = None,
) -> bool:
    """Set the start time (once) and the first heartbeat, and where the wrapper runs. False
    when already final."""
    values = {
        "processingStartTime": func.coalesce(AutoProcProgram.processingStartTime, func.now()),
        "processingEndTime": func.now(),
    }
    if environment is not None:
        values["processingEnvironment"] = clip(environment, ENVIRONMENT_LENGTH)
    if message is not None:
        values["processingMessage"] = clip(message, MESSAGE_LENGTH)
    return bool(_execute(db, _open(program_id).values(**values)))


def heartbeat(db: Session, program_id: int, message: str | None = None) -> bool:
    """Move the heartbeat (and the progress message). False when the program is final."""
    values = {"processingEndTime": func.now()}
    if message is not None:
        values["processingMessage"] = clip(message, MESSAGE_LENGTH)
    return bool(_execute(db, _open(program_id).values(**values)))


def finish(db: Session, program_id: int, *, success: bool, message: str) -> bool:
    """Write the final status once. Returns False (and changes nothing) if one was written."""
    written = _execute(
        db,
        _open(program_id).values(
            processingStatus=1 if success else 0,
            processingMessage=clip(message, MESSAGE_LENGTH),
            processingStartTime=func.coalesce(AutoProcProgram.processingStartTime, func.now()),
            processingEndTime=func.now(),
        ),
    )
    if not written:
        log.warning("program %s already has a final status; kept it", program_id)
    return bool(written)


def finish_stopped(db: Session, program_id: int, detail: str = "") -> bool:
    """A user's stop: status 1 with the documented prefix, so it is told apart from success."""
    text = STOPPED_PREFIX + (f": {detail}" if detail else "")
    return finish(db, program_id, success=True, message=text)


def finish_lost(db: Session, program_id: int, stale_seconds: float, message: str) -> bool:
    """Failure for a program whose heartbeat stopped: written only if it is still open AND its
    heartbeat is still older than ``stale_seconds`` (a run that just beat again is left alone).
    The end time keeps the last heartbeat: the last moment the run was known alive."""
    last = func.coalesce(AutoProcProgram.processingEndTime, AutoProcProgram.processingStartTime)
    written = _execute(
        db,
        _open(program_id)
        .where(
            AutoProcProgram.processingStartTime.is_not(None),
            func.timestampdiff(text("SECOND"), last, func.now()) > stale_seconds,
        )
        .values(processingStatus=0, processingMessage=clip(message, MESSAGE_LENGTH)),
    )
    return bool(written)


def _open(program_id: int):
    return update(AutoProcProgram).where(
        AutoProcProgram.autoProcProgramId == program_id,
        AutoProcProgram.processingStatus.is_(None),
    )


def attach(
    db: Session, program_id: int, path: Path, file_type: str = "Log", importance_rank: int = 1
) -> int:
    if file_type not in FILE_TYPES:
        raise ValueError(f"file type {file_type!r} is not one of {FILE_TYPES}")
    path = Path(path)
    return _execute(
        db,
        insert(AutoProcProgramAttachment).values(
            autoProcProgramId=program_id,
            fileType=file_type,
            fileName=storable(path.name)[:255],
            filePath=storable(str(path.parent))[:255],
            importanceRank=importance_rank,
            recordTimeStamp=func.now(),
        ),
        key=True,
    )


def add_message(
    db: Session, program_id: int, severity: str, message: str, description: str | None = None
) -> None:
    """An AutoProcProgramMessage row, through ISPyB's procedure (the pages read these)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
    db.execute(text("SET @relion_zo_message = NULL"))
    db.execute(
        text("CALL upsert_processing_program_message("
             "@relion_zo_message, :program, :severity, :message, :description)"),
        {"program": program_id, "severity": severity, "message": clip(message, NOTE_LENGTH),
         "description": None if description is None else storable(description)},
    )


STOP_KEY = "relion_zo_stop_request"  # ProcessingJobParameter key of a stop request
STOP_REQUEST = "Stop requested"  # how a stop request reads in a final message
BEFORE_START = "before start"  # a request made while the job had no program yet


def request_stop(db: Session, processing_job_id: int, program_id: int | None, by: str) -> bool:
    """Record a stop request for a job's program (None: the job has none yet), once. The row's
    value says which program and who asked: ``program 12 by alice@host at 2026-12-02 10:00:00``.
    False when one was recorded already."""
    if stop_requested(db, processing_job_id, program_id) is not None:
        return False
    target = f"program {program_id}" if program_id is not None else BEFORE_START
    db.execute(insert(ProcessingJobParameter).values(
        processingJobId=processing_job_id,
        parameterKey=STOP_KEY,
        parameterValue=func.concat(clip(f"{target} by {by}", 900), " at ",
                                   func.date_format(func.now(), "%Y-%m-%d %H:%i:%s")),
    ))
    return True


def stop_requested(db: Session, processing_job_id: int, program_id: int | None) -> str | None:
    """The stop request recorded for a job's program ("Stop requested by …"), or None. A request
    made before the job had a program counts for its first program."""
    value = ProcessingJobParameter.parameterValue
    wanted = [value.like(f"{BEFORE_START} %")]
    if program_id is not None:
        first = db.execute(select(func.min(AutoProcProgram.autoProcProgramId)).where(
            AutoProcProgram.processingJobId == processing_job_id)).scalar()
        wanted = [value.like(f"program {program_id} %")] + (
            wanted if first is None or first == program_id else [])
    found = db.execute(
        select(value)
        .where(ProcessingJobParameter.processingJobId == processing_job_id,
               ProcessingJobParameter.parameterKey == STOP_KEY, or_(*wanted))
        .order_by(ProcessingJobParameter.processingJobParameterId)
        .limit(1)
    ).scalar()
    if found is None:
        return None
    return f"{STOP_REQUEST} by {found.split(' by ', 1)[-1]}"


def open_stop_requests(db: Session) -> list[int]:
    """Relion jobs with a stop request whose newest program is not final (or that have none):
    the ones a worker may have to close. ISPyB indexes ProcessingJobParameter by
    (parameterKey, processingJobId), so finding the stop rows by key reads only those rows."""
    job = ProcessingJobParameter.processingJobId
    newest = aliased(AutoProcProgram)
    later = aliased(AutoProcProgram)
    newest_is_final = (
        select(newest.autoProcProgramId)
        .where(newest.processingJobId == job, newest.processingStatus.is_not(None),
               ~select(later.autoProcProgramId)
               .where(later.processingJobId == newest.processingJobId,
                      later.autoProcProgramId > newest.autoProcProgramId).exists())
        .exists()
    )
    return list(db.execute(
        select(job).distinct()
        .where(ProcessingJobParameter.parameterKey == STOP_KEY, ~newest_is_final)
    ).scalars())


def program_row(db: Session, program_id: int):
    """(status, environment, job) of one program."""
    return db.execute(
        select(AutoProcProgram.processingStatus, AutoProcProgram.processingEnvironment,
               AutoProcProgram.processingJobId)
        .where(AutoProcProgram.autoProcProgramId == program_id)
    ).first()


def is_final(db: Session, program_id: int) -> bool:
    status = db.execute(
        select(AutoProcProgram.processingStatus).where(
            AutoProcProgram.autoProcProgramId == program_id
        )
    ).scalar()
    return status is not None


def programs_of_job(db: Session, processing_job_id: int) -> list[int]:
    return list(
        db.execute(
            select(AutoProcProgram.autoProcProgramId)
            .where(AutoProcProgram.processingJobId == processing_job_id)
            .order_by(AutoProcProgram.autoProcProgramId)
        ).scalars()
    )


def claim(
    db: Session,
    processing_job_id: int,
    *,
    programs: str = "RELION",
    command_line: str | None = None,
    environment: str | None = None,
) -> int | None:
    """Register the job's program unless it already has one: the exactly-once guard.

    The ProcessingJob row is locked for the check and the insert, so two wrappers that get the
    same job at the same moment cannot both claim it. Returns the new program's id, or None when
    the job already has a program (queued, running or finished).
    """
    db.execute(
        select(ProcessingJob.processingJobId)
        .where(ProcessingJob.processingJobId == processing_job_id)
        .with_for_update()
    )
    existing = db.execute(
        select(AutoProcProgram.autoProcProgramId)
        .where(AutoProcProgram.processingJobId == processing_job_id)
        .limit(1)
    ).scalar()
    if existing is not None:
        return None
    return db.execute(
        _new_program(processing_job_id, programs, command_line, environment)
    ).inserted_primary_key[0]


def _older_than(column, seconds: float):
    return func.timestampdiff(text("SECOND"), column, func.now()) > seconds


def stuck_queued(db: Session, older_than: float) -> list[int]:
    """Programs claimed longer than ``older_than`` seconds ago that never started (the process
    that claimed them died before it started a wrapper)."""
    return list(db.execute(
        select(AutoProcProgram.autoProcProgramId).where(
            AutoProcProgram.processingStatus.is_(None),
            AutoProcProgram.processingStartTime.is_(None),
            _older_than(AutoProcProgram.recordTimeStamp, older_than),
        )
    ).scalars())


def stuck_submitted(db: Session, older_than: float, recipe: str) -> list[tuple[int, float]]:
    """(job id, age in seconds) of jobs of ``recipe`` with no program, written more than
    ``older_than`` seconds ago (their message never led to a run)."""
    age = func.timestampdiff(text("SECOND"), ProcessingJob.recordTimestamp, func.now())
    has_program = (select(AutoProcProgram.autoProcProgramId)
                   .where(AutoProcProgram.processingJobId == ProcessingJob.processingJobId)
                   .exists())
    return [(pjid, float(seconds)) for pjid, seconds in db.execute(
        select(ProcessingJob.processingJobId, age).where(
            ProcessingJob.recipe == recipe, ~has_program,
            age > older_than,
        )
    ).all()]
