"""Start, Stop, Restart and Reprocess through the real RabbitMQ, relion_zo's dispatcher and
workers (separate processes), with real RELION and MariaDB."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ispyb.sqlalchemy import ProcessingJob, ProcessingJobParameter
from relion_zo import broker
from runs import job_status, processes_in, program_rows, site_config, wrapper_pid, write_site_file

LIMIT = float(os.environ.get("RELION_ZO_TEST_LIMIT", 180))  # guards against hangs, not speed


@pytest.fixture
def site(tmp_path, stack_settings):
    return site_config(tmp_path, stack_settings, idle_seconds=0)


def use_site(services, tmp_path, stack_settings, name: str, **overrides):
    """A site file with ``overrides`` for the services started from now on."""
    site = site_config(tmp_path, stack_settings, **overrides)
    services.site_file = write_site_file(site, tmp_path / f"site-{name}.yaml")
    return site


def with_idle(services, tmp_path, stack_settings, idle_seconds: float, workers: int = 1):
    """A site whose jobs end ``idle_seconds`` after their last movie, with a dispatcher and
    ``workers`` workers using it."""
    site = use_site(services, tmp_path, stack_settings, f"idle-{idle_seconds:g}",
                    idle_seconds=idle_seconds)
    services.dispatcher()
    started = [services.worker() for _ in range(workers)]
    return site, started


def with_worker_jobs(services, tmp_path, stack_settings, jobs: int):
    """A dispatcher and one worker that runs ``jobs`` jobs at once."""
    site = use_site(services, tmp_path, stack_settings, f"{jobs}-jobs", idle_seconds=0,
                    worker_jobs=jobs)
    services.dispatcher()
    services.worker()
    return site


def wait_state(engine, site, pjid, states, limit=LIMIT):
    deadline = time.monotonic() + limit
    while True:
        state = job_status(engine, site, pjid)
        if state.state in states:
            return state
        assert time.monotonic() < deadline, f"job {pjid} still {state.state} after {limit} s"
        time.sleep(0.2)


def wait_until(check, what, limit=LIMIT):
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {limit} s"
        time.sleep(0.2)


def settled_queues(services) -> dict:
    return broker.queue_depths(services.zocalo)


def start_cli(services, live, *extra) -> int:
    out = services.capture(["start", "--config", str(services.site_file), "--visit", live.name,
                            "--image-directory", str(live.raw), "--file-template", "*.mrc",
                            "-p", "angpix=1.0", "-p", "voltage=300", "-p", "Cs=2.7",
                            "-p", "motioncor_doseperframe=1.0",
                            "-p", "stop_after_motion_correction=true", "--json", *extra])
    return json.loads(out)["processing_job_id"]


def test_start_through_the_broker_runs_once(engine, site, live_visits, services):
    services.dispatcher()
    services.worker()
    live = live_visits(site)
    pjid = start_cli(services, live)
    state = wait_state(engine, site, pjid, {"success", "failure", "stopped"})
    assert state.state == "success", state.message
    (program,) = program_rows(engine, pjid)
    assert program.processingCommandLine == f"relion-zo worker (ispyb_process {pjid})"
    wait_until(lambda: services.idle(), "the worker acknowledging the run")
    assert set(settled_queues(services).values()) == {0}


def test_zocalo_go_reaches_a_run(engine, site, live_visits, services):
    services.dispatcher()
    services.worker()
    live = live_visits(site)
    pjid = start_cli(services, live, "--no-send")
    result = subprocess.run([shutil.which("zocalo.go"), "-p", str(pjid)],
                            env=services.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert wait_state(engine, site, pjid, {"success", "failure"}).state == "success"


def test_the_same_message_twice_runs_once(engine, tmp_path, stack_settings, live_visits,
                                          services):
    site = with_worker_jobs(services, tmp_path, stack_settings, 2)
    live = live_visits(site)
    pjid = start_cli(services, live)  # one message ...
    broker.send(services.zocalo, [broker.recipe_message("relion", pjid)])  # ... and a double click
    assert wait_state(engine, site, pjid, {"success", "failure"}).state == "success"
    wait_until(services.idle, "both deliveries acknowledged")
    assert len(program_rows(engine, pjid)) == 1
    assert set(settled_queues(services).values()) == {0}


def test_bad_messages_are_dead_lettered_not_retried(engine, site, services):
    services.dispatcher()
    services.worker()
    for body in (b'{"ispyb_process": "abc"}', b'{"ispyb_process": 999999999}'):
        broker.publish_raw(services.zocalo, broker.RUN_QUEUE, body)
    broker.send(services.zocalo, [{"recipes": [], "parameters": {"ispyb_process": 999999999}}])
    dlq = broker.dead_letter_queue
    wait_until(lambda: broker.queue_depths(services.zocalo, [dlq("relion")])[dlq("relion")] == 2,
               "two rejected run messages in dlq.relion")
    wait_until(lambda: broker.queue_depths(services.zocalo, [dlq(broker.PROCESSING_RECIPE)])[
        dlq(broker.PROCESSING_RECIPE)] == 1, "the unknown job's request in dlq.processing_recipe")
    assert services.alive()
    assert "unknown processing job 999999999" in services.logs()


def test_stop_through_the_broker(engine, tmp_path, stack_settings, live_visits, services):
    site, _ = with_idle(services, tmp_path, stack_settings, 3600)
    live = live_visits(site, movies=2)
    pjid = start_cli(services, live)
    wait_state(engine, site, pjid, {"running"})
    running_file = live.project(pjid) / "RUNNING_RELION_IT"
    wait_until(running_file.exists, "the driver's RUNNING_RELION_IT")
    out = services.capture(["stop", "--config", str(services.site_file), str(pjid),
                            "--wait", "30"])
    assert "stopped" in out
    state = job_status(engine, site, pjid)
    assert state.state == "stopped" and state.message.startswith("Stopped by user")
    assert processes_in(live.project(pjid)) == []
    wait_until(services.idle, "run and stop acknowledged")


def test_stopping_a_submitted_job_keeps_it_from_starting(engine, site, live_visits, services):
    services.dispatcher()
    services.worker()
    live = live_visits(site)
    pjid = start_cli(services, live, "--no-send")
    services.capture(["stop", "--config", str(services.site_file), str(pjid), "--wait", "30"])
    assert job_status(engine, site, pjid).state == "stopped"
    broker.send(services.zocalo, [broker.recipe_message("relion", pjid)])  # a late Start
    wait_until(services.idle, "the late run acknowledged")
    assert len(program_rows(engine, pjid)) == 1
    assert job_status(engine, site, pjid).state == "stopped"
    assert not live.project(pjid).exists()


def test_restart_and_reprocess(engine, tmp_path, stack_settings, live_visits, services):
    site, _ = with_idle(services, tmp_path, stack_settings, 4)
    live = live_visits(site)
    old = start_cli(services, live)
    state = wait_state(engine, site, old, {"running"})
    out = services.capture(["restart", "--config", str(services.site_file),
                            "--dcid", str(state.data_collection_id),
                            "--set", "motioncor_bfactor=100"])
    new = int(out.split("processing job ")[-1].split()[0])
    assert job_status(engine, site, old).state == "stopped"
    assert wait_state(engine, site, new, {"success", "failure"}).state == "success"
    assert parameters(engine, new)["motioncor_bfactor"] == "100"  # as given
    assert parameters(engine, new)["angpix"] == "1.0"

    out = services.capture(["reprocess", "--config", str(services.site_file), str(new),
                            "--set", "motioncor_bfactor=200"])
    again = int(out.split("processing job ")[1].split()[0])
    assert wait_state(engine, site, again, {"success", "failure"}).state == "success"
    assert parameters(engine, again)["motioncor_bfactor"] == "200"


def test_bulk_reprocess_is_resumable(engine, live_visits, services, tmp_path, stack_settings):
    site = with_worker_jobs(services, tmp_path, stack_settings, 2)
    visits = [live_visits(site) for _ in range(2)]
    firsts = [start_cli(services, v) for v in visits]
    for pjid in firsts:
        assert wait_state(engine, site, pjid, {"success", "failure"}).state == "success"
    listing = tmp_path / "jobs.txt"
    listing.write_text(f"# to redo\n{firsts[0]}\n999999999\n{firsts[1]}\n")
    args = ["reprocess", "--config", str(services.site_file), "--from-file", str(listing),
            "--set", "motioncor_bfactor=120"]

    code, out = services.run_cli(args)
    assert code == 1
    assert "[2/3] job 999999999: failed: unknown processing job 999999999" in out
    ledger = dict(line.split() for line in (tmp_path / "jobs.txt.done").read_text().splitlines())
    assert set(ledger) == {str(p) for p in firsts}
    for new in ledger.values():
        assert wait_state(engine, site, int(new), {"success", "failure"}).state == "success"
    jobs_before = count_jobs(engine)

    code, out = services.run_cli(args)
    assert code == 1
    assert out.count("done before") == 2
    assert count_jobs(engine) == jobs_before


def test_a_killed_worker_fails_no_running_job(engine, site, live_visits, services, tmp_path,
                                              stack_settings):
    # The wrapper runs in a session of its own and owns its job: killing the worker (its
    # whole process group) leaves it running to its own final status, and a new worker
    # neither runs the job again nor fails it.
    site, (first,) = with_idle(services, tmp_path, stack_settings, 4)
    live = live_visits(site)
    pjid = start_cli(services, live)
    wait_state(engine, site, pjid, {"running"})
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert job_status(engine, site, pjid).state == "running"
    services.worker()
    state = wait_state(engine, site, pjid, {"failure", "success", "stopped"}, limit=120)
    assert state.state == "success", state.message
    wait_until(services.idle, "nothing left in the queues")
    assert len(program_rows(engine, pjid)) == 1
    assert processes_in(live.project(pjid)) == []


def test_reap_finalises_lost_jobs(engine, site, live_visits, services):
    from relion_zo import programs

    live = live_visits(site)
    pjid = start_cli(services, live, "--no-send")
    with Session(engine) as db, db.begin():  # a wrapper on another host, gone
        program = programs.claim(db, pjid, command_line="a wrapper that will be killed")
        programs.mark_running(db, program, environment="host=elsewhere pid=1")
    wait_state(engine, site, pjid, {"lost"}, limit=30)
    out = services.capture(["reap", "--config", str(services.site_file), "--visit", live.name])
    assert f"processing job {pjid}: lost, recorded as failure" in out
    assert job_status(engine, site, pjid).state == "failure"
    assert "1 lost job(s) reaped" in out


def test_two_workers_share_the_jobs(engine, site, live_visits, services):
    services.dispatcher()
    services.worker()
    services.worker()
    visits = [live_visits(site) for _ in range(4)]
    pjids = [start_cli(services, v) for v in visits]
    for pjid in pjids:
        assert wait_state(engine, site, pjid, {"success", "failure"}).state == "success"
    assert all(len(program_rows(engine, p)) == 1 for p in pjids)
    # Each worker logs the jobs it claimed: both took some (one job at a time each).
    worker_logs = [p.read_text() for p in services.log_files if p.name.startswith("worker")]
    claimed = [sum(f"job {pjid}: program" in text for pjid in pjids) for text in worker_logs]
    assert sorted(claimed) != [0, 4] and sum(claimed) == 4, claimed


def parameters(engine, pjid) -> dict:
    with Session(engine) as db:
        return dict(db.execute(select(ProcessingJobParameter.parameterKey,
                                      ProcessingJobParameter.parameterValue).where(
            ProcessingJobParameter.processingJobId == pjid)).all())


def count_jobs(engine) -> int:
    with Session(engine) as db:
        return db.execute(select(func.count()).select_from(ProcessingJob)).scalar()


def test_the_demo_runs_end_to_end_through_the_broker(engine, tmp_path, services, capsys):
    from conftest import new_visit_name
    from relion_zo.cli.main import main as cli
    from relion_zo.devstack.demo import remove_visit
    from relion_zo.visits import find_visit

    visit = new_visit_name()
    try:
        # two movies (about 230 particles, less than a batch of 300): the whole first pass up
        # to Class2D on batch 1; tests/test_pipeline.py runs InitialModel, Class3D and the
        # second pass
        assert cli(["demo", "--root", str(tmp_path / "demo"), "--visit", visit,
                    "--movies", "2"]) == 0
        out = capsys.readouterr().out
        assert "success (Import 2, MotionCorr 2/2, CtfFind 2/2, AutoPick 2/2 (" in out
        lines = out.rstrip().splitlines()
        table = lines[lines.index("== status") + 2]  # the job's row, after the header
        assert table.endswith("Class2D batch 1 of 1") and table.split()[2] == "success"
        # its results in ISPyB, in numbers, and its report
        assert "movies      2 motion-corrected;" in out and "classes     4 2D, 0 3D" in out
        report = Path(lines[-1])
        assert report.name == "relion_zo_report.html"
        assert "2D classes: Class2D/job007, batch 1" in report.read_text()
    finally:
        with Session(engine) as db:
            remove_visit(db, find_visit(db, visit).session_id)


def test_a_wrapper_killed_under_a_live_worker_gets_its_failure_written(
        engine, tmp_path, stack_settings, live_visits, services):
    site, _ = with_idle(services, tmp_path, stack_settings, 3600)
    live = live_visits(site)
    pjid = start_cli(services, live)
    wait_state(engine, site, pjid, {"running"})
    project = live.project(pjid)
    wait_until(lambda: processes_in(project, "relion_"), "RELION running")
    os.kill(wrapper_pid(engine, pjid), signal.SIGKILL)
    state = wait_state(engine, site, pjid, {"failure", "success", "stopped"}, limit=60)
    assert state.state == "failure"
    assert state.message == ("Wrapper crashed: the wrapper process ended (signal 9) without a "
                             "final status")
    wait_until(lambda: processes_in(project) == [], "the worker ending the orphaned RELION",
               limit=30)
    assert not (project / "RUNNING_RELION_IT").exists()
    wait_until(services.idle, "the run acknowledged")
    assert services.alive()

