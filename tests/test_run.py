"""The wrapper's work with real RELION 3.1 and the real MariaDB: every path ends in a final
AutoProcProgram status."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from conftest import REPO, row_counts
from ispyb.sqlalchemy import ProcessingJobParameter
from relion_zo import runner
from relion_zo.cli import reap as reap_cli
from relion_zo.cli import run as run_cli
from relion_zo.cli import stop as stop_cli
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.options import read_options
from relion_zo.runner import run_job
from runs import (
    Background,
    attachments,
    error_messages,
    job_status,
    processes_in,
    program_rows,
    site_config,
    write_site_file,
)

RUN_LIMIT = 180  # seconds; a guard against a hang, not a speed check


@pytest.fixture
def site(tmp_path, stack_settings):
    return site_config(tmp_path, stack_settings)


@pytest.fixture
def live(site, live_visits):
    return live_visits(site, movies=2)


def test_run_end_to_end(engine, site, live, tmp_path, capsys):
    pjid = live.start(motioncor_gainreference="gain.mrc")
    site_file = write_site_file(site, tmp_path / "site.yaml")

    assert run_cli.main(["--config", str(site_file), str(pjid)]) == 0
    assert f"processing job {pjid}: success" in capsys.readouterr().out

    state = job_status(engine, site, pjid)
    assert state.state == "success"
    assert state.message == "Import 2, MotionCorr 2/2"
    (program,) = program_rows(engine, pjid)
    assert program.processingStatus == 1
    assert program.processingStartTime <= program.processingEndTime
    assert program.processingPrograms == "RELION"
    assert f"relion-zo run {pjid}" == program.processingCommandLine
    assert f"pid={os.getpid()}" in program.processingEnvironment
    assert attachments(engine, program.autoProcProgramId) == {
        "relion_it_options.py": "Input",
        "default_pipeline.star": "Result",
        "relion_zo_run.log": "Log",
    }

    project = live.project(pjid)
    assert os.readlink(project / "Movies") == os.path.relpath(live.raw, project)
    assert (project / "gain.mrc").read_bytes() == live.gain.read_bytes()
    options = read_options(project / "relion_it_options.py")
    assert options["import_images"] == "Movies/*.mrc"
    assert options["motioncor_gainreference"] == "gain.mrc"
    assert options["angpix"] == 1.0
    submitted = pl.read_submitted(project)
    assert set(submitted) == {"import_job", "motioncorr_job"}
    for job in submitted.values():
        assert pl.exit_state(project, job) == "success"
    corrected = list((project / submitted["motioncorr_job"] / "Movies").glob("*.mrc"))
    assert len(corrected) == 2
    assert not (project / pl.RUNNING_RELION_IT).exists()
    assert not list(project.glob(pl.RUNNING_PIPELINER + "*"))
    assert processes_in(project) == []


def test_streaming_movies_added_while_running(processing_engine,
                                              engine, tmp_path, stack_settings, live_visits):
    site = site_config(tmp_path, stack_settings, idle_seconds=4)
    live = live_visits(site, movies=2)
    pjid = live.start()
    added = []
    seen_states = set()

    def on_progress(progress):
        if not added and progress.counts.get("MotionCorr") == 2:
            live.add_movies(2)
            added.append(progress.passes)

    run = Background(pjid, engine=processing_engine, config=site, on_progress=on_progress)
    while run.thread.is_alive():
        seen_states.add(job_status(engine, site, pjid).state)
        time.sleep(0.2)
    outcome = run.join(RUN_LIMIT)

    assert added == [1]
    assert outcome.state == "success"
    assert outcome.message == "Import 4, MotionCorr 4/4"
    assert "running" in seen_states
    log = (live.project(pjid) / runner.RUN_LOG).read_text()
    assert "pass 1: Import 2, MotionCorr 2/2" in log
    assert "Import 4, MotionCorr 4/4" in log
    corrected = list((live.project(pjid) / "MotionCorr/job002/Movies").glob("*.mrc"))
    assert len(corrected) == 4


def test_a_session_that_has_not_begun_runs_no_relion_until_its_first_movie(
        processing_engine, engine, tmp_path, stack_settings, live_visits):
    site = site_config(tmp_path, stack_settings, idle_seconds=6)
    live = live_visits(site, movies=1)
    pjid = live.start()
    for movie in live.raw.glob("*.mrc"):  # the folder is empty when the run begins
        movie.unlink()
    run = Background(pjid, engine=processing_engine, config=site)
    project = live.project(pjid)
    deadline = time.monotonic() + 60
    while not (project / runner.RUN_LOG).exists() or job_status(engine, site, pjid).state != (
            "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # a pass would have run RELION's Import on nothing by now
    assert not (project / "relion_zo_pipeliner.log").exists()
    assert not list(project.glob("Import/job*/movies.star"))  # added, never run
    live.add_movies(1)
    outcome = run.join(RUN_LIMIT)
    assert outcome.state == "success", outcome.message
    assert outcome.message == "Import 1, MotionCorr 1/1"


def test_stop_ends_relion_and_records_stopped(processing_engine,
                                              engine, tmp_path, stack_settings, capsys,
                                              live_visits):
    # Enough work that the stop lands while RELION runs; no idle end, so only the stop ends it.
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site, movies=12, size=512, frames=8)
    pjid = live.start()
    site_file = write_site_file(site, tmp_path / "site.yaml")
    project = live.project(pjid)

    run = Background(pjid, engine=processing_engine, config=site)
    deadline = time.monotonic() + 60
    # Motion correction itself: a short relion_pipeliner --addJob works in the project too,
    # and may be gone by the time it is looked for again.
    while not processes_in(project, "relion_run_moti") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() < deadline, "motion correction never started"
    assert stop_cli.main(["--local", "--config", str(site_file), str(pjid)]) == 0
    assert "will stop" in capsys.readouterr().out
    outcome = run.join(RUN_LIMIT)

    assert outcome.state == "stopped"
    state = job_status(engine, site, pjid)
    assert state.state == "stopped"
    assert state.message.startswith("Stopped by user: Stop requested by relion-zo stop")
    assert processes_in(project) == []
    assert not list(project.glob(pl.RUNNING_PIPELINER + "*"))
    # A second stop finds nothing to stop.
    assert stop_cli.main(["--local", "--config", str(site_file), str(pjid)]) == 1


def test_sigterm_stops_the_foreground_run(engine, tmp_path, stack_settings, live_visits):
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site, movies=2)
    pjid = live.start()
    site_file = write_site_file(site, tmp_path / "site.yaml")
    proc = subprocess.Popen(
        [shutil.which("relion-zo"), "run", "--config", str(site_file), str(pjid)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while job_status(engine, site, pjid).state != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        while "pass 1" not in _read(live.project(pjid) / runner.RUN_LOG):
            assert time.monotonic() < deadline, "the first pass never ended"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=RUN_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    # A service manager's SIGTERM is a shutdown, not a user's stop: a failure that says so
    # and how to carry on.
    assert proc.returncode == 1, output
    state = job_status(engine, site, pjid)
    assert state.state == "failure"
    assert state.message.startswith("Shutdown: SIGTERM received (service shutdown)")
    assert f"relion-zo resume {pjid}" in state.message
    assert processes_in(live.project(pjid)) == []


def _read(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _failed(engine, site, pjid, outcome):
    assert outcome.state == "failure"
    state = job_status(engine, site, pjid)
    assert state.state == "failure"
    (program,) = program_rows(engine, pjid)
    assert program.processingStatus == 0
    assert program.processingStartTime is not None and program.processingEndTime is not None
    assert error_messages(engine, program.autoProcProgramId)
    return state.message


def test_missing_gain_fails_before_relion(processing_engine, engine, site, live):
    pjid = live.start(motioncor_gainreference="gain.mrc")
    live.gain.unlink()
    outcome = run_job(pjid, engine=processing_engine, config=site)
    message = _failed(engine, site, pjid, outcome)
    assert str(live.gain) in message
    assert not (live.project(pjid) / pl.PIPELINE_STAR).exists()


def test_unreadable_gain_fails(processing_engine, engine, site, live):
    pjid = live.start(motioncor_gainreference="gain.mrc")
    live.gain.write_bytes(b"this is not an MRC file")
    message = _failed(engine, site, pjid, run_job(pjid, engine=processing_engine, config=site))
    assert str(live.gain) in message


def test_missing_raw_folder_fails(processing_engine, engine, site, live):
    pjid = live.start()
    live.raw.rename(live.raw.with_name("raw-moved"))
    message = _failed(engine, site, pjid, run_job(pjid, engine=processing_engine, config=site))
    assert str(live.raw) in message


def test_ctf_asked_for_without_ctffind_fails(processing_engine, engine, site, live):
    # SynchWeb writes jobs itself: one that asks for CTF estimation reaches a site without ctffind.
    pjid = live.start(stop_after_ctf_estimation="true")
    with Session(engine) as db:
        db.execute(delete(ProcessingJobParameter).where(
            ProcessingJobParameter.processingJobId == pjid,
            ProcessingJobParameter.parameterKey == "stop_after_motion_correction"))
        db.commit()
    message = _failed(engine, site, pjid, run_job(pjid, engine=processing_engine, config=site))
    assert "ctffind is not available" in message


def test_corrupt_movie_fails_with_relions_error(processing_engine, engine, site, live):
    pjid = live.start()
    # A movie RELION refuses to read: complex-valued MRC. (Random bytes are worse than useless
    # here: RELION trusts the header's sizes and can allocate the machine's memory away.)
    with mrcfile.new(live.raw / "movie_9999.mrc") as bad:
        bad.set_data(np.zeros((4, 128, 128), np.complex64))
    message = _failed(engine, site, pjid, run_job(pjid, engine=processing_engine, config=site))
    assert message.startswith("Failed: MotionCorr/job002/ failure")
    assert "readMRC" in message
    assert processes_in(live.project(pjid)) == []


def test_exception_anywhere_writes_failure(processing_engine, engine, site, live):
    pjid = live.start()

    def broken(progress):
        raise RuntimeError("display broke")

    with pytest.raises(RuntimeError):
        run_job(pjid, engine=processing_engine, config=site, on_progress=broken)
    state = job_status(engine, site, pjid)
    assert state.state == "failure"
    assert state.message == "Wrapper crashed: RuntimeError: display broke"
    assert processes_in(live.project(pjid)) == []


def test_second_run_of_a_job_is_skipped(processing_engine, engine, site, live):
    pjid = live.start()
    assert run_job(pjid, engine=processing_engine, config=site).state == "success"
    again = run_job(pjid, engine=processing_engine, config=site)
    assert again.state == "skipped"
    assert len(program_rows(engine, pjid)) == 1
    assert job_status(engine, site, pjid).state == "success"


def test_unknown_job_writes_nothing(engine, site, db, tmp_path, capsys):
    site_file = write_site_file(site, tmp_path / "site.yaml")
    before = row_counts(db)
    assert run_cli.main(["--config", str(site_file), "999999999"]) == 1
    assert "unknown processing job 999999999" in capsys.readouterr().err
    assert stop_cli.main(["--local", "--config", str(site_file), "999999999"]) == 1
    db.rollback()
    assert row_counts(db) == before


def test_wrapper_runs_under_zocalo_wrap(engine, site, live, tmp_path, stack_settings):
    import json

    import workflows.recipe

    pjid = live.start()
    recipe = workflows.recipe.Recipe((REPO / "relion_zo" / "recipes" / "relion.json").read_text())
    recipe.apply_parameters({"ispyb_process": pjid})
    message = {"recipe": recipe.recipe, "recipe-pointer": 1, "recipe-path": [],
               "environment": {"ID": f"test-{pjid}"}, "payload": None}
    recwrap = tmp_path / "recipewrapper.json"
    recwrap.write_text(json.dumps(message))
    env = dict(os.environ, RELION_ZO_CONFIG=str(write_site_file(site, tmp_path / "site.yaml")),
               ZOCALO_CONFIG=str(stack_settings.zocalo_config_path))
    zocalo_wrap = shutil.which("zocalo.wrap")
    result = subprocess.run(
        [zocalo_wrap, "--wrap", "relion", "--recipewrapper", str(recwrap)],
        env=env, capture_output=True, text=True, timeout=RUN_LIMIT,
    )
    assert result.returncode == 0, result.stderr
    assert "successfully finished processing" in result.stderr
    (program,) = program_rows(engine, pjid)
    assert program.processingCommandLine.startswith("zocalo.wrap --wrap relion")
    assert job_status(engine, site, pjid).state == "success"


def test_runs_are_independent_of_the_callers_directory(processing_engine,
                                                       engine, site, live, tmp_path):
    # The driver never changes the process's directory: RELION gets cwd= instead.
    before = os.getcwd()
    pjid = live.start()
    assert run_job(pjid, engine=processing_engine, config=site).state == "success"
    assert os.getcwd() == before
    assert sys.modules["relion_zo.relion_it.driver"].__dict__.get("os") is os


def test_restart_reuses_the_projects_jobs(processing_engine, engine, site, live):
    from relion_zo import jobs
    from relion_zo.relion_it.driver import run_driver

    pjid = live.start()
    assert run_job(pjid, engine=processing_engine, config=site).state == "success"
    project = live.project(pjid)
    first = pl.read_submitted(project)
    live.add_movies(1)

    with Session(engine) as db:
        spec = jobs.load_job(db, site, pjid)
    notes = []
    _, settings = runner.prepare_project(spec, site, notes.append, resume=True)
    result = run_driver(settings, note=notes.append)

    assert result.outcome == "finished"
    assert result.progress.text() == "Import 3, MotionCorr 3/3"
    assert pl.read_submitted(project) == first
    assert pl.process_names(project) == sorted(first.values())
    assert f"reusing {first['import_job']} for import_job" in notes
    assert len((project / pl.SUBMITTED_JOBS).read_text().splitlines()) == 2


def test_claim_is_exactly_once_under_concurrency(processing_engine, engine, site, live):
    import threading

    from relion_zo.manager import JobManager

    manager = JobManager(processing_engine, site)
    pjid = live.start()
    barrier = threading.Barrier(4)
    claimed = []

    def claim():
        barrier.wait()
        claimed.append(manager.claim(pjid, command_line="test", environment=""))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == 4
    assert len([c for c in claimed if c is not None]) == 1
    assert len(program_rows(engine, pjid)) == 1


def test_stopping_a_queued_job_keeps_it_from_running(processing_engine, engine, site, live):
    from relion_zo.manager import JobManager

    manager = JobManager(processing_engine, site)
    pjid = live.start()
    program = manager.claim(pjid, command_line="a worker about to start it", environment="")
    assert job_status(engine, site, pjid).state == "queued"
    result = manager.request_stop(pjid, "test")
    assert result.action == "marked"
    outcome = run_job(pjid, engine=processing_engine, config=site, program_id=program)
    assert outcome.state == "skipped"
    assert job_status(engine, site, pjid).state == "stopped"
    assert not live.project(pjid).exists()


def test_reprocess_and_restart_refuse_bad_input_and_write_nothing(processing_engine,
                                                                  engine, site, live, tmp_path,
                                                                  capsys):
    from relion_zo.cli.main import main as cli

    pjid = live.start()
    assert run_job(pjid, engine=processing_engine, config=site).state == "success"
    site_file = write_site_file(site, tmp_path / "site.yaml")
    with Session(engine) as db:
        before = row_counts(db)
    for args, error in (
        (["reprocess", str(pjid), "--set", "voltage=lots"], "parameter voltage"),
        (["reprocess", str(pjid), "--set", "no_such_option=1"], "no_such_option"),
        (["reprocess", str(pjid), "--set", "angpix=1", "--set", "angpix=2"], "angpix"),
        (["reprocess", "999999999"], "unknown processing job 999999999"),
        (["restart", "--dcid", "999999999"], "unknown data collection 999999999"),
        (["stop", "999999999"], "unknown processing job 999999999"),
    ):
        assert cli([*args[:1], "--config", str(site_file), "--no-send", *args[1:]]
                   if args[0] == "reprocess" else
                   [*args[:1], "--config", str(site_file), *args[1:]]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and error in err, (args, err)
    with Session(engine) as db:
        assert row_counts(db) == before


def test_stop_by_data_collection_marks_its_active_job(engine, site, live, tmp_path, capsys):
    pjid = live.start()
    dcid = job_status(engine, site, pjid).data_collection_id
    site_file = write_site_file(site, tmp_path / "site.yaml")
    # The web side may only ask (its grants write no AutoProcProgram) ...
    assert stop_cli.main(["--local", "--config", str(site_file), "--dcid", str(dcid)]) == 0
    assert (f"processing job {pjid} is submitted: stop requested; a worker closes it"
            in capsys.readouterr().out)
    assert job_status(engine, site, pjid).state == "submitted"
    # ... and the processing side closes it, as a worker does at each round.
    assert reap_cli.main(["--config", str(site_file)]) == 0
    assert (f"processing job {pjid}: asked to stop before it ran, recorded as stopped"
            in capsys.readouterr().out)
    state = job_status(engine, site, pjid)
    assert state.state == "stopped" and "relion-zo stop (" in state.message
    assert stop_cli.main(["--local", "--config", str(site_file), "--dcid", str(dcid)]) == 1
    assert f"data collection {dcid} has no active job" in capsys.readouterr().out


def test_ctf_estimation_runs_with_the_sites_ctffind(processing_engine, engine, tmp_path,
                                                    stack_settings, live_visits):
    """Import, MotionCorr and CtfFind to success, RELION's CtfFind job running the site's
    ctffind (here relion-zo-ctffind-aspire, docs/ctffind-standin.md)."""
    ctffind = shutil.which("relion-zo-ctffind-aspire")
    assert ctffind, "scripts/install-deps.sh installs relion-zo-ctffind-aspire"
    site = site_config(tmp_path, stack_settings, idle_seconds=0,
                       executables={"relion_pipeliner": "relion_pipeliner", "ctffind": ctffind})
    # relion_it's power-spectrum path: MotionCorr saves them, CtfFind uses them (movies big
    # enough for RELION's 512-pixel spectra)
    live = live_visits(site, movies=2, size=1024, frames=4, angpix=2.0)
    pjid = live.start(angpix="2.0", stop_after_motion_correction="false",
                      stop_after_ctf_estimation="true")
    outcome = run_job(pjid, engine=processing_engine, config=site)
    assert outcome.state == "success", outcome.message
    assert outcome.message == "Import 2, MotionCorr 2/2, CtfFind 2/2"
    motion = live.project(pjid) / "MotionCorr" / "job002" / "corrected_micrographs.star"
    assert len(pl.star_column(motion, "micrographs", "_rlnCtfPowerSpectrum")) == 2
    star = live.project(pjid) / "CtfFind" / "job003" / "micrographs_ctf.star"
    defoci = [float(v) for v in pl.star_column(star, "micrographs", "_rlnDefocusU")]
    assert len(defoci) == 2 and all(d > 0 for d in defoci)
