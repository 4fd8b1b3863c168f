"""The job-state rules of relion_zo/sql/job_status.sql, case by case, on the real database.

The rules exist only as SQL, so they are tested only there. The session's clock is frozen
(MariaDB's ``SET timestamp``), so ``NOW()`` in the SQL is ``NOW`` here and the stale limit can
be tested to the second.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import insert, text

from ispyb.sqlalchemy import AutoProcProgram, DataCollection, DataCollectionGroup, ProcessingJob
from relion_zo import status
from relion_zo.status import STOPPED_PREFIX

NOW = dt.datetime(2026, 11, 22, 12, 0, 0)


@pytest.fixture
def frozen(db):
    """``NOW()`` is ``NOW`` for this test's connection; the connection's clock is given back."""
    db.execute(text("SET timestamp = UNIX_TIMESTAMP(:now)"), {"now": NOW})
    assert db.execute(text("SELECT NOW()")).scalar() == NOW
    yield db
    # On the connection itself: it goes back to the pool, and a failed test may have left the
    # session unusable.
    db.bind.exec_driver_sql("SET timestamp = DEFAULT")


def ago(seconds):
    return NOW - dt.timedelta(seconds=seconds)


def job(db, session_id: int, program: dict | None, recipe: str = status.RECIPE) -> int:
    """A ProcessingJob in a data collection of its own, with one program row of ``program``."""
    dcg = db.execute(insert(DataCollectionGroup).values(
        sessionId=session_id, experimentType="EM")).inserted_primary_key[0]
    dcid = db.execute(insert(DataCollection).values(
        dataCollectionGroupId=dcg, SESSIONID=session_id)).inserted_primary_key[0]
    pjid = db.execute(insert(ProcessingJob).values(
        dataCollectionId=dcid, recipe=recipe)).inserted_primary_key[0]
    if program is not None:
        db.execute(insert(AutoProcProgram).values(processingJobId=pjid, **program))
    return pjid


def state(db, pjid: int, stale_seconds: float = 30) -> str:
    [row] = status.query_states(db, stale_seconds=stale_seconds, processing_job_id=pjid)
    return row.state


CASES = [
    (None, "submitted"),
    ({}, "queued"),
    ({"processingEndTime": ago(5)}, "queued"),  # no start time: not yet running
    ({"processingStartTime": ago(100), "processingEndTime": ago(5)}, "running"),
    ({"processingStartTime": ago(100), "processingEndTime": ago(30)}, "running"),
    ({"processingStartTime": ago(100), "processingEndTime": ago(31)}, "lost"),
    ({"processingStartTime": ago(100)}, "lost"),  # no heartbeat: the start time counts
    ({"processingStartTime": ago(10)}, "running"),
    ({"processingStatus": 1, "processingMessage": "done"}, "success"),
    ({"processingStatus": 1}, "success"),
    ({"processingStatus": 1, "processingMessage": STOPPED_PREFIX + ": via relion-zo stop"},
     "stopped"),
    ({"processingStatus": 1, "processingMessage": "done. " + STOPPED_PREFIX}, "success"),
    ({"processingStatus": 0, "processingMessage": STOPPED_PREFIX}, "failure"),
    ({"processingStatus": 0, "processingStartTime": ago(5), "processingEndTime": ago(1)},
     "failure"),
    ({"processingStatus": 0, "processingStartTime": ago(500), "processingEndTime": ago(400)},
     "failure"),  # final beats stale
    ({"processingStatus": 2}, "failure"),  # any other status
]


@pytest.mark.parametrize(("program", "expected"), CASES)
def test_rules(frozen, visit, program, expected):
    assert state(frozen, job(frozen, visit.session_id, program)) == expected


def test_stale_limit_comes_from_the_caller(frozen, visit):
    pjid = job(frozen, visit.session_id,
               {"processingStartTime": ago(100), "processingEndTime": ago(45)})
    assert state(frozen, pjid, stale_seconds=30) == "lost"
    assert state(frozen, pjid, stale_seconds=60) == "running"


def test_only_relion_jobs(frozen, visit):
    job(frozen, visit.session_id, None, recipe="not-relion")
    relion = job(frozen, visit.session_id, None)
    rows = status.query_states(frozen, stale_seconds=30, session_id=visit.session_id)
    assert [r.processing_job_id for r in rows] == [relion]


def test_the_sql_names_exactly_the_known_states():
    named = set(re.findall(r"THEN '(\w+)'", status.sql_text()))
    named |= set(re.findall(r"ELSE '(\w+)'", status.sql_text()))
    assert named == set(status.STATES)
    assert f"LIKE '{STOPPED_PREFIX}%'" in status.sql_text()
    assert status.ACTIVE_STATES | status.FINAL_STATES | {"lost"} == set(status.STATES)
