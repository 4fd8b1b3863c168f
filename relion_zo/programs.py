"""AutoProcProgram statements, following ISPyB's own rules (``upsert_processing_program_v2``).

- the start time is set once;
- while a job runs, every update sets ``processingEndTime`` to now: it is the heartbeat;
- a final status (0 or 1) is written once and never changed: every update below is guarded by
  ``processingStatus IS NULL``, so a late heartbeat or a second finish changes nothing.

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
    AutoProcProgramMessage,
    ProcessingJob,
)
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

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
    if text is None:
        return None
    text = " ".join(str(text).split())
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
    if written:
        add_message(db, program_id, "ERROR", message)
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
            fileName=path.name[:255],
            filePath=str(path.parent)[:255],
            importanceRank=importance_rank,
            recordTimeStamp=func.now(),
        ),
        key=True,
    )


def add_message(
    db: Session, program_id: int, severity: str, message: str, description: str | None = None
) -> int:
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {SEVERITIES}")
    return _execute(
        db,
        insert(AutoProcProgramMessage).values(
            autoProcProgramId=program_id,
            severity=severity,
            message=clip(message, NOTE_LENGTH),
            description=description,
        ),
        key=True,
    )


STOP_REQUEST = "Stop requested"  # AutoProcProgramMessage.message prefix of a stop request


def request_stop(db: Session, program_id: int, by: str) -> bool:
    """Record a stop request for a running program (once). False when one was recorded."""
    if stop_requested(db, program_id) is not None:
        return False
    add_message(db, program_id, "INFO", f"{STOP_REQUEST} by {by}")
    return True


def stop_requested(db: Session, program_id: int) -> str | None:
    """The stop request recorded for a program (its message), or None."""
    return db.execute(
        select(AutoProcProgramMessage.message)
        .where(
            AutoProcProgramMessage.autoProcProgramId == program_id,
            AutoProcProgramMessage.message.like(STOP_REQUEST + "%"),
        )
        .order_by(AutoProcProgramMessage.autoProcProgramMessageId)
        .limit(1)
    ).scalar()


def program_row(db: Session, program_id: int):
    """(status, environment, stop request) of one program."""
    return db.execute(
        select(AutoProcProgram.processingStatus, AutoProcProgram.processingEnvironment)
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
