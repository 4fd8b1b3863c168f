"""Job states on real rows: Python and sql/job_status.sql agree; a visit is one query."""

from __future__ import annotations

from sqlalchemy import event, text, update

from conftest import GOOD_PARAMS
from ispyb.sqlalchemy import AutoProcProgram
from relion_zo import jobs, programs, status


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
    return pjid


def test_python_and_sql_agree_on_every_state(db, site, visit):
    expected = {_job_in_state(db, site, visit, s): s for s in status.STATES}
    py = {s.processing_job_id: s.state for s in status.query_states(
        db, stale_seconds=site.stale_seconds, session_id=visit.session_id)}
    sql = dict(status.query_states_sql(db, stale_seconds=site.stale_seconds,
                                       session_id=visit.session_id))
    assert py == expected
    assert sql == expected
    # the filters of the SQL file match the Python ones
    some = next(iter(expected))
    assert status.query_states_sql(db, stale_seconds=site.stale_seconds,
                                   processing_job_id=some) == [(some, expected[some])]


def test_newest_program_decides(db, site, visit):
    pjid = _job_in_state(db, site, visit, "failure")
    programs.mark_running(db, programs.register(db, pjid))
    [row] = status.query_states(db, stale_seconds=site.stale_seconds, processing_job_id=pjid)
    assert row.state == "running"
    assert dict(status.query_states_sql(db, stale_seconds=site.stale_seconds,
                                        processing_job_id=pjid)) == {pjid: "running"}


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
