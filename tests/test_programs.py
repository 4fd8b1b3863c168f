"""The AutoProcProgram writer keeps ISPyB's rules on the real database."""

from __future__ import annotations

from sqlalchemy import select

from conftest import GOOD_PARAMS
from ispyb.sqlalchemy import AutoProcProgram, AutoProcProgramAttachment, AutoProcProgramMessage
from relion_zo import jobs, programs, status


def _row(db, app):
    return db.execute(select(
        AutoProcProgram.processingStatus, AutoProcProgram.processingMessage,
        AutoProcProgram.processingStartTime, AutoProcProgram.processingEndTime,
        AutoProcProgram.processingPrograms,
    ).where(AutoProcProgram.autoProcProgramId == app)).one()


def _job(db, site, visit):
    return jobs.start_job(db, site, GOOD_PARAMS, visit=visit.name, image_directory=str(visit.raw),
                          file_template=visit.template).processing_job_id


def test_lifecycle_and_final_status_written_once(db, site, visit):
    app = programs.register(db, _job(db, site, visit), command_line="relion-zo run 1")
    row = _row(db, app)
    assert row.processingStatus is None and row.processingStartTime is None
    assert row.processingPrograms == "RELION"
    assert programs.mark_running(db, app)
    started = _row(db, app).processingStartTime
    assert started is not None
    assert programs.heartbeat(db, app, "MotionCorr 1/2")
    assert programs.mark_running(db, app)  # the start time is set once
    assert _row(db, app).processingStartTime == started
    assert programs.finish(db, app, success=False, message="MotionCorr failed")
    assert not programs.finish(db, app, success=True, message="later success")
    assert not programs.heartbeat(db, app, "late heartbeat")
    assert not programs.finish_stopped(db, app)
    row = _row(db, app)
    assert (row.processingStatus, row.processingMessage) == (0, "MotionCorr failed")


def test_stopped_is_told_apart(db, site, visit):
    pjid = _job(db, site, visit)
    app = programs.register(db, pjid)
    programs.mark_running(db, app)
    programs.finish_stopped(db, app, "relion-zo stop")
    assert _row(db, app).processingMessage == "Stopped by user: relion-zo stop"
    [row] = status.query_states(db, stale_seconds=30, processing_job_id=pjid)
    assert row.state == "stopped"


def test_long_messages_are_clipped_to_the_column(db, site, visit):
    app = programs.register(db, _job(db, site, visit))
    programs.heartbeat(db, app, "x" * 1000)
    assert len(_row(db, app).processingMessage) == programs.MESSAGE_LENGTH
    programs.add_message(db, app, "ERROR", "y" * 500, description="z" * 5000)
    note = db.execute(select(AutoProcProgramMessage).where(
        AutoProcProgramMessage.autoProcProgramId == app)).scalar_one()
    assert len(note.message) == programs.NOTE_LENGTH and len(note.description) == 5000


def test_attachments(db, site, visit, tmp_path):
    app = programs.register(db, _job(db, site, visit))
    programs.attach(db, app, tmp_path / "relion_it_options.py", "Input")
    att = db.execute(select(AutoProcProgramAttachment).where(
        AutoProcProgramAttachment.autoProcProgramId == app)).scalar_one()
    assert (att.fileName, att.filePath, att.fileType) == (
        "relion_it_options.py", str(tmp_path), "Input")


def test_stop_requests_are_open_only_while_the_newest_program_is(db, site, visit):
    """What a worker round settles: a job asked to stop that is not final yet; never one whose
    newest program is final (stopped jobs keep their request row for good)."""
    names = sorted(path.name for path in visit.raw.glob("*.mrc"))
    asked, running, done = (jobs.start_job(  # three data collections: one active job each
        db, site, GOOD_PARAMS, visit=visit.name, image_directory=str(visit.raw),
        file_template=template).processing_job_id for template in ["*.mrc", *names[:2]])
    for pjid in (asked, running, done):
        programs.request_stop(db, pjid, None, "test")
    first = programs.register(db, running)
    assert programs.finish(db, first, success=False, message="Failed: x")
    programs.register(db, running)  # resumed: a newer program, still open
    programs.finish_stopped(db, programs.register(db, done))
    found = set(programs.open_stop_requests(db))
    assert {asked, running} <= found and done not in found
