"""The project is the one RELION 3.1's relion_it.py builds, and relion_zo shares it safely:
relion_it's reading of RELION_IT_SUBMITTED_JOBS, its documented stop, RELION's GUI mark, a
scientist's options file kept, and no second scheduler beside a live one (real RELION)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time

from runs import Background, job_status, site_config

from relion_zo.relion_it import options as options_mod
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.driver import live_schedulers, processes_in
from relion_zo.runner import run_job

RUN_LIMIT = 180  # guards against hangs, not speed


def test_submitted_jobs_are_read_as_relion_it_reads_them_and_never_doubled(tmp_path):
    (tmp_path / pl.SUBMITTED_JOBS).write_text(
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job002/\n"
        "import_job = Import/job009/\n")
    assert pl.read_submitted(tmp_path)["import_job"] == "Import/job001/"  # the first line
    (tmp_path / pl.SUBMITTED_JOBS).write_text(
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job002/\n")
    pl.record_submitted(tmp_path, "motioncorr_job", "MotionCorr/job003/")  # added again
    pl.record_submitted(tmp_path, "ctffind_job", "CtfFind/job004/")
    assert (tmp_path / pl.SUBMITTED_JOBS).read_text() == (
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job003/\n"
        "ctffind_job = CtfFind/job004/\n")


def test_a_project_opens_in_relions_gui_as_a_project(tmp_path):
    pl.ensure_pipeline(tmp_path)
    pl.ensure_pipeline(tmp_path)  # again: nothing changes, nothing fails
    assert (tmp_path / pl.GUI_PROJECT_MARK).is_file()
    assert (tmp_path / pl.PIPELINE_STAR).read_text() == pl.EMPTY_PIPELINE


def test_a_scientists_options_file_is_kept_before_it_is_replaced(tmp_path):
    path = tmp_path / options_mod.OPTIONS_FILE
    path.write_text("angpix = 0.83\nvoltage = 200\n")  # by hand, for relion_it.py
    when = dt.datetime(2026, 12, 2, 10, 0, 0)
    options_mod.write_options(tmp_path, "# written 10:00\nangpix = 1.0\n", now=when)
    backup = tmp_path / f"{options_mod.OPTIONS_FILE}.bak-20261202-100000"
    assert backup.read_text() == "angpix = 0.83\nvoltage = 200\n"
    assert path.read_text() == "# written 10:00\nangpix = 1.0\n"
    # The same settings written again (a new time stamp only): nothing more is kept.
    options_mod.write_options(tmp_path, "# written 10:05\nangpix = 1.0\n",
                              now=when + dt.timedelta(minutes=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [options_mod.OPTIONS_FILE,
                                                          backup.name]


def test_removing_running_pipeliner_preprocess_stops_the_run(processing_engine, engine,
                                                             tmp_path, stack_settings,
                                                             live_visits):
    """relion_it's documented stop: remove RUNNING_PIPELINER_PREPROCESS."""
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site, movies=12, size=512, frames=8)
    pjid = live.start()
    project = live.project(pjid)
    run = Background(pjid, engine=processing_engine, config=site)
    running = project / f"{pl.RUNNING_PIPELINER}PREPROCESS"
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.exists(), "the pipeliner never started"
    running.unlink()
    outcome = run.join(RUN_LIMIT)
    assert outcome.state == "stopped", outcome.message
    state = job_status(engine, site, pjid)
    assert state.state == "stopped"
    assert "RUNNING_PIPELINER_PREPROCESS was removed" in state.message
    assert processes_in(project) == []


def test_no_second_scheduler_beside_a_live_one(processing_engine, engine, tmp_path,
                                               stack_settings, live_visits):
    """A scientist's relion_pipeliner (RELION's GUI scheduler) in the project: relion_zo's
    resume refuses before it writes anything, and leaves it running."""
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site)
    pjid = live.start()
    project = live.project(pjid)
    first = Background(pjid, engine=processing_engine, config=site)
    deadline = time.monotonic() + 60
    while not (project / pl.RUNNING_RELION_IT).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (project / pl.RUNNING_RELION_IT).unlink()  # relion_it's own stop: the job is resumable
    assert first.join(RUN_LIMIT).state == "stopped"
    options_before = (project / options_mod.OPTIONS_FILE).read_text()
    theirs = subprocess.Popen(
        ["relion_pipeliner", "--schedule", "THEIRS", "--repeat", "1000", "--min_wait", "30",
         "--RunJobs", "Import/job001/ "],
        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not live_schedulers(project) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_schedulers(project) == [f"pid {theirs.pid} (relion_pipeliner)"]
        from relion_zo.manager import JobManager
        from relion_zo.runner import environment_text

        program = JobManager(processing_engine, site).new_program(
            pjid, command_line="relion-zo resume", environment=environment_text())
        outcome = run_job(pjid, engine=processing_engine, config=site, program_id=program,
                          resume=True)
        assert outcome.state == "failure"
        assert "another scheduler is running" in outcome.message
        assert f"pid {theirs.pid} (relion_pipeliner)" in outcome.message
        assert theirs.poll() is None, "relion_zo must not stop a scheduler it did not start"
        assert (project / options_mod.OPTIONS_FILE).read_text() == options_before
    finally:
        os.killpg(theirs.pid, signal.SIGKILL)
        theirs.wait()
