"""Faults, injected on the real servers: RabbitMQ and MariaDB killed and restarted while a job
runs, a wrapper killed and its job resumed. Each asserts the final state, that nothing ran
twice, and that no RELION process outlives the job (docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import time

from relion_zo.cli.main import main
from relion_zo.devstack import stack
from relion_zo.relion_it import pipeliner as pl
from runs import job_status, processes_in, program_rows, wrapper_pid, write_site_file
from test_broker import start_cli, wait_state, wait_until, with_idle

OUTAGE = 12.0  # seconds a server stays down: longer than stale_seconds and the backoffs


def test_a_rabbitmq_restart_fails_no_running_job(engine, live_visits, services, tmp_path,
                                                 stack_settings):
    site, _ = with_idle(services, tmp_path, stack_settings, OUTAGE * 2 + 10)
    live = live_visits(site)
    pjid = start_cli(services, live)
    wait_state(engine, site, pjid, {"running"})
    started = time.monotonic()
    stack.stop_server(stack_settings, "rabbitmq")
    try:
        time.sleep(OUTAGE)
        assert job_status(engine, site, pjid).state == "running"
    finally:
        stack.start_server(stack_settings, "rabbitmq")
    state = wait_state(engine, site, pjid, {"success", "failure", "stopped"})
    assert state.state == "success", state.message
    assert len(program_rows(engine, pjid)) == 1
    assert processes_in(live.project(pjid)) == []
    # The services came back by themselves: a new job runs through them.
    second = live_visits(site)
    pjid2 = start_cli(services, second)
    assert wait_state(engine, site, pjid2, {"success", "failure"}).state == "success"
    assert services.alive()
    print(f"outage {OUTAGE:.0f} s; job final {time.monotonic() - started:.1f} s after it began")


def test_a_mariadb_restart_fails_no_running_job(engine, live_visits, services, tmp_path,
                                                stack_settings):
    from relion_zo import broker

    site, _ = with_idle(services, tmp_path, stack_settings, OUTAGE * 2 + 10)
    live = live_visits(site)
    pjid = start_cli(services, live)
    later = start_cli(services, live_visits(site), "--no-send")  # sent during the outage
    wait_state(engine, site, pjid, {"running"})
    project = live.project(pjid)
    stack.stop_server(stack_settings, "mariadb")
    try:
        # A Start's message arriving now is kept by the dispatcher, not dead-lettered.
        broker.send(stack_settings.zocalo_config_path, [{"parameters": {"ispyb_process": later}}])
        time.sleep(OUTAGE)
        assert (project / pl.RUNNING_RELION_IT).exists()  # RELION went on without the database
    finally:
        stack.start_server(stack_settings, "mariadb")
    engine.dispose()  # the test's own pooled connections died with the server
    wait_until(lambda: "work again" in (project / "relion_zo_run.log").read_text(),
               "the wrapper beating again", limit=60)
    state = wait_state(engine, site, pjid, {"success", "failure", "stopped"})
    assert state.state == "success", state.message
    assert len(program_rows(engine, pjid)) == 1
    assert processes_in(project) == []
    assert wait_state(engine, site, later, {"success", "failure"}).state == "success"
    depths = broker.queue_depths(stack_settings.zocalo_config_path)
    assert all(depths[broker.dead_letter_queue(q)] == 0 for q in broker.QUEUES), depths
    assert services.alive()


def test_a_killed_wrapper_is_recorded_and_resumed_without_redoing_movies(
        engine, live_visits, services, tmp_path, stack_settings, capsys):
    site, _ = with_idle(services, tmp_path, stack_settings, 3600)
    live = live_visits(site, movies=3)
    pjid = start_cli(services, live)
    project = live.project(pjid)
    wait_until(lambda: "pass 1" in _read(project / "relion_zo_run.log"), "a first pass")
    corrected = sorted((project / "MotionCorr").rglob("movie_*.mrc"))
    assert len(corrected) == 3
    before = {p: p.stat().st_mtime_ns for p in corrected}
    os.kill(wrapper_pid(engine, pjid), signal.SIGKILL)
    state = wait_state(engine, site, pjid, {"failure", "success", "stopped"})
    assert state.message.startswith("Wrapper crashed: the wrapper process ended (signal 9)")
    wait_until(lambda: processes_in(project) == [], "RELION ended with its wrapper", limit=30)

    live.add_movies(1)
    quick = site.model_copy(update={"idle_seconds": 0})
    site_file = write_site_file(quick, tmp_path / "resume.yaml")
    assert main(["resume", "--config", str(site_file), str(pjid)]) == 0
    assert "success: Import 4, MotionCorr 4/4" in capsys.readouterr().out
    assert job_status(engine, site, pjid).state == "success"
    assert len(program_rows(engine, pjid)) == 2  # the crash kept its own record
    after = sorted((project / "MotionCorr").rglob("movie_*.mrc"))
    assert len(after) == 4
    assert all(p.stat().st_mtime_ns == before[p] for p in corrected), "finished movies redone"
    assert processes_in(project) == []


def test_resume_refuses_a_job_that_is_not_over(engine, live_visits, tmp_path, stack_settings,
                                               capsys):
    from runs import site_config

    site = site_config(tmp_path, stack_settings)
    live = live_visits(site)
    pjid = live.start()
    site_file = write_site_file(site, tmp_path / "site.yaml")
    assert main(["resume", "--config", str(site_file), str(pjid)]) == 1
    assert "is submitted; only a failed, stopped or lost job can be resumed" in (
        capsys.readouterr().err)
    assert program_rows(engine, pjid) == []


def _read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_nothing_stays_submitted_or_queued_forever(processing_engine,
                                                   engine, live_visits, tmp_path, stack_settings):
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from relion_zo import broker, control
    from relion_zo.manager import JobManager
    from runs import site_config

    site = site_config(tmp_path, stack_settings, resend_after_seconds=60,
                       submitted_limit_seconds=3600)
    manager = JobManager(processing_engine, site)
    unsent, ancient, claimed = (live_visits(site).start() for _ in range(3))
    program = manager.claim(claimed, command_line="a worker that died at once", environment="")
    with Session(engine) as db, db.begin():  # as if written a while ago
        for pjid, minutes in ((unsent, 5), (ancient, 120)):
            db.execute(text("UPDATE ProcessingJob SET recordTimestamp = NOW() - INTERVAL :m "
                            "MINUTE WHERE processingJobId = :j"), {"m": minutes, "j": pjid})
        db.execute(text("UPDATE AutoProcProgram SET recordTimeStamp = NOW() - INTERVAL 1 HOUR "
                        "WHERE autoProcProgramId = :p"), {"p": program})
    zocalo = stack_settings.zocalo_config_path
    queue = broker.PROCESSING_RECIPE
    broker.purge(zocalo, [queue])
    sent = {}

    def send(pjid: int) -> None:
        broker.send(zocalo, [{"parameters": {"ispyb_process": pjid}}])

    try:
        result = control.rescue(manager, send, sent)
        assert program in result.never_started
        assert unsent in result.resent and ancient in result.failed
        assert broker.queue_depths(zocalo, [queue])[queue] >= 1
        assert job_status(engine, site, claimed).message.startswith(
            "Wrapper crashed: claimed but never started")
        assert job_status(engine, site, ancient).message.startswith(
            "Failed: never picked up by a worker")
        assert job_status(engine, site, unsent).state == "submitted"
        # Sent once per resend period, not at every look.
        assert unsent not in control.rescue(manager, send, sent).resent
    finally:
        broker.purge(zocalo, [queue])
