"""Job states of jobs driven by relion_zo's own writers (Start, programs), read through
relion_zo/sql/job_status.sql: every state, the filters, the newest program, one query a visit."""

from __future__ import annotations

from conftest import GOOD_PARAMS
from ispyb.sqlalchemy import AutoProcProgram, ProcessingJob
from sqlalchemy import event, insert, text, update

from relion_zo import jobs, programs, status
from relion_zo.visits import find_visit


def _job_in_state(db, site, visit, state: str) -> int:
    """A fresh data collection (own template) with one job driven into ``state``."""
    template = f"{state}_*.mrc"
    (visit.raw / f"{state}_1.mrc").write_bytes(b"")
    pjid = jobs.start_job(db, site, GOOD_PARAMS, visit=visit.name,
                          image_directory=str(visit.raw), file_template=template).processing_job_id
    if state == "submitted":
        return pjid
    app = programs.register(db, pjid)
    if state == "queued":
        db.commit()
        return app and pjid
    programs.mark_running(db, app)
    if state == "lost":
        db.execute(update(AutoProcProgram).where(AutoProcProgram.autoProcProgramId == app).values(
            processingStartTime=text("NOW() - INTERVAL 1 HOUR"),
            processingEndTime=text("NOW() - INTERVAL 10 MINUTE")))
        db.commit()
    elif state == "success":
        programs.finish(db, app, success=True, message="MotionCorr 2/2")
    elif state == "stopped":
        programs.finish_stopped(db, app, "relion-zo stop")
    elif state == "failure":
        programs.finish(db, app, success=False, message="MotionCorr failed")
    db.commit()
    return pjid


def test_every_state(db, site, visit):
    expected = {_job_in_state(db, site, visit, s): s for s in status.STATES}
    rows = status.query_states(db, stale_seconds=site.stale_seconds, session_id=visit.session_id)
    assert {s.processing_job_id: s.state for s in rows} == expected
    assert [r.processing_job_id for r in rows] == sorted(expected)
    by_state = {s.state: s for s in rows}
    assert by_state["submitted"].auto_proc_program_id is None
    assert by_state["queued"].start_time is None and by_state["queued"].heartbeat is None
    assert by_state["running"].start_time is not None
    assert by_state["success"].processing_status == 1
    assert by_state["stopped"].message.startswith(status.STOPPED_PREFIX)
    assert by_state["failure"].processing_status == 0
    assert all(r.session_id == visit.session_id for r in rows)


def test_filters(db, site, visit):
    expected = {_job_in_state(db, site, visit, s): s for s in status.STATES}
    for pjid, state in expected.items():
        [row] = status.query_states(db, stale_seconds=site.stale_seconds, processing_job_id=pjid)
        assert row.state == state
        [same] = status.query_states(db, stale_seconds=site.stale_seconds,
                                     data_collection_id=row.data_collection_id)
        assert same == row
    lost = status.lost_jobs(db, stale_seconds=site.stale_seconds, session_id=visit.session_id)
    assert [r.state for r in lost] == ["lost"]
    assert {r.state for r in status.query_states(
        db, stale_seconds=site.stale_seconds, session_id=visit.session_id,
        states=status.FINAL_STATES)} == status.FINAL_STATES
    for pjid, state in expected.items():
        [row] = status.query_states(db, stale_seconds=site.stale_seconds, processing_job_id=pjid)
        active = status.active_jobs(db, row.data_collection_id,
                                    stale_seconds=site.stale_seconds)
        assert [r.processing_job_id for r in active] == ([pjid] if row.active else [])
    assert status.query_states(db, stale_seconds=site.stale_seconds,
                               session_id=visit.session_id + 10**6) == []


def test_newest_program_decides(db, site, visit):
    pjid = _job_in_state(db, site, visit, "failure")
    programs.mark_running(db, programs.register(db, pjid))
    [row] = status.query_states(db, stale_seconds=site.stale_seconds, processing_job_id=pjid)
    assert row.state == "running"


def test_a_visit_is_one_query_whatever_its_size(db, site, visit):
    for s in status.STATES:
        _job_in_state(db, site, visit, s)
    statements = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(db.bind.engine, "before_cursor_execute", count)
    try:
        rows = status.query_states(db, stale_seconds=site.stale_seconds,
                                   session_id=visit.session_id)
    finally:
        event.remove(db.bind.engine, "before_cursor_execute", count)
    assert len(rows) == len(status.STATES)
    assert len(statements) == 1


def test_the_status_of_a_visit_is_at_most_two_statements(db, site, visit):
    """What `relion-zo status --visit` asks the database, counted with SQLAlchemy's
    ``before_cursor_execute`` event: the visit by name, then job_status.sql, whatever the
    visit holds (every state, a job with two programs, another pipeline's job)."""
    expected = {_job_in_state(db, site, visit, s): s for s in status.STATES}
    again = next(pjid for pjid, s in expected.items() if s == "failure")
    programs.mark_running(db, programs.register(db, again))  # its newest program decides
    expected[again] = "running"
    db.execute(insert(ProcessingJob).values(
        dataCollectionId=status.query_states(db, stale_seconds=site.stale_seconds,
                                             processing_job_id=again)[0].data_collection_id,
        recipe="em-spa-preprocess"))
    db.commit()
    db.connection()  # the test's own SAVEPOINT, before counting
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db.bind.engine, "before_cursor_execute", count)
    try:
        session_id = find_visit(db, visit.name).session_id
        rows = status.query_states(db, stale_seconds=site.stale_seconds, session_id=session_id)
    finally:
        event.remove(db.bind.engine, "before_cursor_execute", count)
    assert {r.processing_job_id: r.state for r in rows} == expected
    assert len(statements) <= 2, statements
