"""Job states: the one owner of the rules (docs/status.md).

A job's state comes from its newest AutoProcProgram:

=========  ==============================================================
submitted  ProcessingJob with no AutoProcProgram
queued     AutoProcProgram, no start time, no status
running    start time set, status NULL, heartbeat younger than the stale limit
lost       start time set, status NULL, heartbeat older than the stale limit
success    status 1
stopped    status 1 and the message starts with ``STOPPED_PREFIX``
failure    status 0
=========  ==============================================================

``sql/job_status.sql`` states the same rules in SQL for SynchWeb and people at a MariaDB prompt;
a test checks that both agree. Times are compared with the database's clock (``NOW()``), so a
worker's clock skew cannot make a job look lost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Connection, and_, func, select, text
from sqlalchemy.orm import Session, aliased

from ispyb.sqlalchemy import AutoProcProgram, DataCollection, ProcessingJob

RECIPE = "relion"
STOPPED_PREFIX = "Stopped by user"
STATES = ("submitted", "queued", "running", "lost", "success", "stopped", "failure")
ACTIVE_STATES = frozenset({"submitted", "queued", "running"})
FINAL_STATES = frozenset({"success", "stopped", "failure"})


@dataclass(frozen=True)
class JobStatus:
    processing_job_id: int
    data_collection_id: int | None
    session_id: int | None
    auto_proc_program_id: int | None
    start_time: dt.datetime | None
    heartbeat: dt.datetime | None
    processing_status: int | None
    message: str | None
    state: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def as_json(self) -> dict:
        out = asdict(self)
        for key in ("start_time", "heartbeat"):
            if out[key] is not None:
                out[key] = out[key].isoformat(sep=" ")
        return out


def classify(
    *,
    has_program: bool,
    start_time: dt.datetime | None,
    heartbeat: dt.datetime | None,
    processing_status: int | None,
    message: str | None,
    now: dt.datetime,
    stale_seconds: float,
) -> str:
    """The state of one job from its newest program's columns. Pure; see the module table."""
    if not has_program:
        return "submitted"
    if processing_status == 1:
        return "stopped" if (message or "").startswith(STOPPED_PREFIX) else "success"
    if processing_status is not None:
        return "failure"
    if start_time is None:
        return "queued"
    last = heartbeat or start_time
    # Whole seconds, as TIMESTAMPDIFF(SECOND, ...) counts them in the SQL twin.
    age = int((now - last).total_seconds())
    return "lost" if age > stale_seconds else "running"


def _query(
    processing_job_id: int | None,
    data_collection_id: int | None,
    session_id: int | None,
):
    newest = aliased(AutoProcProgram)
    newest_id = (
        select(func.max(newest.autoProcProgramId))
        .where(newest.processingJobId == ProcessingJob.processingJobId)
        .correlate(ProcessingJob)
        .scalar_subquery()
    )
    app = AutoProcProgram
    stmt = (
        select(
            ProcessingJob.processingJobId,
            ProcessingJob.dataCollectionId,
            DataCollection.SESSIONID,
            app.autoProcProgramId,
            app.processingStartTime,
            app.processingEndTime,
            app.processingStatus,
            app.processingMessage,
            func.now(),
        )
        .join(DataCollection, DataCollection.dataCollectionId == ProcessingJob.dataCollectionId)
        .outerjoin(
            app,
            and_(
                app.processingJobId == ProcessingJob.processingJobId,
                app.autoProcProgramId == newest_id,
            ),
        )
        .where(ProcessingJob.recipe == RECIPE)
        .order_by(ProcessingJob.processingJobId)
    )
    if processing_job_id is not None:
        stmt = stmt.where(ProcessingJob.processingJobId == processing_job_id)
    if data_collection_id is not None:
        stmt = stmt.where(ProcessingJob.dataCollectionId == data_collection_id)
    if session_id is not None:
        stmt = stmt.where(DataCollection.SESSIONID == session_id)
    return stmt


def query_states(
    db: Session | Connection,
    *,
    stale_seconds: float,
    processing_job_id: int | None = None,
    data_collection_id: int | None = None,
    session_id: int | None = None,
    lock: bool = False,
) -> list[JobStatus]:
    """Every relion job matching the filters, in one query, with its state."""
    stmt = _query(processing_job_id, data_collection_id, session_id)
    if lock:
        stmt = stmt.with_for_update(of=ProcessingJob)
    return _rows(db.execute(stmt).all(), stale_seconds)


def _rows(rows, stale_seconds: float) -> list[JobStatus]:
    return [
        JobStatus(
            processing_job_id=pjid,
            data_collection_id=dcid,
            session_id=sid,
            auto_proc_program_id=appid,
            start_time=start,
            heartbeat=beat,
            processing_status=status,
            message=message,
            state=classify(
                has_program=appid is not None,
                start_time=start,
                heartbeat=beat,
                processing_status=status,
                message=message,
                now=now,
                stale_seconds=stale_seconds,
            ),
        )
        for pjid, dcid, sid, appid, start, beat, status, message, now in rows
    ]


def lost_jobs(
    db: Session | Connection, *, stale_seconds: float, session_id: int | None = None
) -> list[JobStatus]:
    """Jobs whose newest program started, has no final status and no recent heartbeat."""
    stmt = _query(None, None, session_id).where(
        AutoProcProgram.processingStatus.is_(None),
        AutoProcProgram.processingStartTime.is_not(None),
    )
    return [s for s in _rows(db.execute(stmt).all(), stale_seconds) if s.state == "lost"]


def sql_path() -> Path:
    return Path(__file__).resolve().parent.parent / "sql" / "job_status.sql"


def sql_text() -> str:
    """The SQL twin of ``query_states``, from ``sql/job_status.sql``."""
    return sql_path().read_text()


def query_states_sql(
    db: Session | Connection,
    *,
    stale_seconds: float,
    processing_job_id: int | None = None,
    data_collection_id: int | None = None,
    session_id: int | None = None,
) -> list[tuple[int, str]]:
    """(processing_job_id, state) from the SQL file, as SynchWeb would run it."""
    rows = db.execute(
        text(sql_text().rstrip().rstrip(";")),
        {
            "stale_seconds": stale_seconds,
            "processing_job_id": processing_job_id,
            "data_collection_id": data_collection_id,
            "session_id": session_id,
        },
    ).all()
    return [(row.processing_job_id, row.state) for row in rows]


def active_jobs(
    db: Session | Connection, data_collection_id: int, *, stale_seconds: float
) -> list[JobStatus]:
    """Jobs that block a second Start for this data collection."""
    return [
        s
        for s in query_states(db, stale_seconds=stale_seconds, data_collection_id=data_collection_id)
        if s.active
    ]
