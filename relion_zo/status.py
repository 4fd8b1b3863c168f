"""Job states: the one owner of the rules (docs/status.md).

The rules are written once, in SQL: ``relion_zo/sql/job_status.sql`` (package data). This module
runs that text and nothing else decides a state, so ``relion-zo status``, the duplicate guard of
Start, ``relion-zo reap``, SynchWeb and a person at a MariaDB prompt all get the same answer.
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

Times are compared with the database's clock (``NOW()``), so a worker's clock skew cannot make
a job look lost. Every query is one round trip, whatever the number of jobs, and its rows become
``JobStatus`` tuples without a per-row mapping (a visit of 10,000 jobs is 10,000 rows:
docs/performance.md).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from importlib import resources
from operator import itemgetter
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.orm import Session

RECIPE = "relion"
# What relion_zo writes as the message of a user's Stop; job_status.sql matches the same text.
STOPPED_PREFIX = "Stopped by user"
STATES = ("submitted", "queued", "running", "lost", "success", "stopped", "failure")
ACTIVE_STATES = frozenset({"submitted", "queued", "running"})
FINAL_STATES = frozenset({"success", "stopped", "failure"})
SQL_FILE = "job_status.sql"


class JobStatus(NamedTuple):
    """One row of ``job_status.sql``: each field is the column of the same name. (A named
    tuple: immutable, and made from a row in a fraction of a frozen dataclass's time.)"""

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
        out = self._asdict()
        for key in ("start_time", "heartbeat"):
            if out[key] is not None:
                out[key] = out[key].isoformat(sep=" ")
        return out


COLUMNS = JobStatus._fields


@functools.cache
def sql_text() -> str:
    """The text of ``relion_zo/sql/job_status.sql`` as installed with the package."""
    return (resources.files("relion_zo") / "sql" / SQL_FILE).read_text(encoding="utf-8")


@functools.cache
def _select() -> str:
    """The file's SELECT as a statement: without its comment lines and final semicolon."""
    lines = [line for line in sql_text().splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").rstrip()


def _statement(states: Collection[str] | None):
    if states is None:
        return text(_select())
    unknown = set(states) - set(STATES)
    if unknown:
        raise ValueError(f"unknown job state(s): {', '.join(sorted(unknown))}")
    return text(
        f"SELECT * FROM (\n{_select()}\n) AS job_status\n"
        "WHERE job_status.state IN :states\nORDER BY job_status.processing_job_id"
    ).bindparams(bindparam("states", value=sorted(states), expanding=True))


def query_states(
    db: Session | Connection,
    *,
    stale_seconds: float,
    processing_job_id: int | None = None,
    data_collection_id: int | None = None,
    session_id: int | None = None,
    states: Collection[str] | None = None,
) -> list[JobStatus]:
    """Every relion job matching the filters (None matches all), in one query of
    ``job_status.sql``, ordered by job id. ``states`` keeps only jobs in those states (the
    database filters them)."""
    result = db.execute(
        _statement(states),
        {
            "stale_seconds": stale_seconds,
            "processing_job_id": processing_job_id,
            "data_collection_id": data_collection_id,
            "session_id": session_id,
        },
    )
    given = list(result.keys())
    missing = [name for name in COLUMNS if name not in given]
    if missing:
        raise RuntimeError(f"{SQL_FILE} gives no column(s) {', '.join(missing)}")
    rows = result.all()
    make = JobStatus._make
    if given == list(COLUMNS):
        return [make(row) for row in rows]
    pick = itemgetter(*(given.index(name) for name in COLUMNS))
    return [make(pick(row)) for row in rows]


def lost_jobs(
    db: Session | Connection, *, stale_seconds: float, session_id: int | None = None
) -> list[JobStatus]:
    """Jobs whose newest program started, has no final status and no recent heartbeat."""
    return query_states(db, stale_seconds=stale_seconds, session_id=session_id,
                        states={"lost"})


def active_jobs(
    db: Session | Connection, data_collection_id: int, *, stale_seconds: float
) -> list[JobStatus]:
    """Jobs that block a second Start for this data collection."""
    return query_states(db, stale_seconds=stale_seconds, data_collection_id=data_collection_id,
                        states=ACTIVE_STATES)
