"""Warm wrappers (``relion_zo.warm``): a fork server forks each job's wrapper from a process that
has imported a run's code; each wrapper is still a process of its own, writes its own final
status and outlives the server. Real MariaDB and RELION."""

from __future__ import annotations

import os
import signal
import time

import pytest
from runs import job_status, processes_in, program_rows, site_config, write_site_file

from relion_zo import control
from relion_zo.manager import JobManager
from relion_zo.runner import environment_text
from relion_zo.warm import ForkServer, ForkServerError

LIMIT = 120.0


def _server(site, tmp_path) -> ForkServer:
    env = dict(os.environ, RELION_ZO_CONFIG=str(write_site_file(site, tmp_path / "site.yaml")))
    server = ForkServer(env=env)
    server.start()
    return server


def _claim(processing_engine, site, pjid) -> int:
    return JobManager(processing_engine, site).claim(
        pjid, command_line="test_warm", environment=environment_text())


def _wait(check, what, limit=LIMIT):
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {limit} s"
        time.sleep(0.05)


def test_a_warm_wrapper_runs_the_job_and_its_end_is_reported(
        processing_engine, engine, live_visits, tmp_path, stack_settings):
    site = site_config(tmp_path, stack_settings, idle_seconds=0)
    live = live_visits(site)
    pjid = live.start()
    server = _server(site, tmp_path)
    try:
        assert server.failed_imports == []
        wrapper = server.spawn(pjid, _claim(processing_engine, site, pjid))
        code = _wait(lambda: [wrapper.poll()] if wrapper.poll() is not None else None,
                     "end of the wrapper")[0]
        assert code == 0 and wrapper.end_text is None
        state = job_status(engine, site, pjid)
        assert state.state == "success", state.message
        (row,) = program_rows(engine, pjid)
        # The wrapper recorded itself, and the record names the forked process, now gone.
        assert f" pid={wrapper.pid} " in row.processingEnvironment
        assert control.wrapper_alive(row.processingEnvironment, pjid) is False
        assert server.alive(), "one job's end does not end the server"
    finally:
        server.close()


def test_wrappers_outlive_their_fork_server(processing_engine, engine, live_visits, tmp_path,
                                            stack_settings):
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site)
    pjid = live.start()
    server = _server(site, tmp_path)
    wrapper = server.spawn(pjid, _claim(processing_engine, site, pjid))
    try:
        _wait(lambda: job_status(engine, site, pjid).state == "running", "running job")
        (row,) = program_rows(engine, pjid)
        assert control.wrapper_alive(row.processingEnvironment, pjid) is True
        server.process.send_signal(signal.SIGKILL)  # the worker went, and its server with it
        server.process.wait()
        time.sleep(1.0)
        assert wrapper.poll() is None, "the wrapper must carry on without its server"
        assert job_status(engine, site, pjid).state == "running"
        JobManager(processing_engine, site).request_stop(pjid, "test_warm")
        _wait(lambda: wrapper.poll() is not None, "end of the orphaned wrapper", limit=30)
        assert wrapper.end_text == "its exit status is unknown: its fork server had gone"
        state = job_status(engine, site, pjid)
        assert state.state == "stopped", state.message
        _wait(lambda: processes_in(live.project(pjid)) == [], "RELION gone", limit=30)
    finally:
        try:
            os.kill(wrapper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.close()


def test_a_request_that_is_not_a_job_is_refused_and_the_server_goes_on(tmp_path, stack_settings):
    site = site_config(tmp_path, stack_settings)
    server = _server(site, tmp_path)
    try:
        server.process.stdin.write(b"1; rm -rf /\n")
        server.process.stdin.flush()
        with pytest.raises(ForkServerError, match="is not 'PJID PROGRAM'"):
            server._answer(10.0, "started")
        assert server.alive()
    finally:
        server.close()
    assert server.process is None
