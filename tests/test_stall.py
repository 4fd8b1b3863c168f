"""A pass that makes no progress fails naming its job; however a pass ends, nothing RELION
started in the project outlives it (processes in sessions of their own that ignore SIGTERM,
as MPI ranks are, included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from standins import driver_settings, kill_left, nothing_left, run_limited, standin

from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.driver import PROJECT_MARKER, end_relion_in, processes_in, project_mark


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    yield folder
    kill_left(folder)


def test_a_hung_program_fails_the_run_naming_its_job(tmp_path, project):
    bin_dir = tmp_path / "bin"
    standin(bin_dir, "relion_run_motioncorr", "exec sleep 300\n")
    settings = driver_settings(tmp_path, project, bin_dir, stall_seconds=2)

    result = run_limited(settings)

    assert result.outcome == "failed"
    assert result.reason == "MotionCorr/job002/ made no progress for 2 s (stall_seconds)"
    assert result.progress.counts == {"Import": 2, "MotionCorr": 0}
    assert nothing_left(project) == []
    assert not (project / pl.RUNNING_RELION_IT).exists()
    assert not list(project.glob(pl.RUNNING_PIPELINER + "*"))


def test_a_slow_program_that_writes_is_not_stalled(tmp_path, project):
    # Twice the stall limit of work that shows (its output grows), then RELION's own program.
    bin_dir = tmp_path / "bin"
    standin(bin_dir, "relion_run_motioncorr",
            "for i in 1 2 3 4 5 6 7 8; do echo working; sleep 0.5; done\n"
            f'exec {shutil.which("relion_run_motioncorr")} "$@"\n')
    settings = driver_settings(tmp_path, project, bin_dir, stall_seconds=2)

    result = run_limited(settings)

    assert result.outcome == "finished", result.reason
    assert result.progress.counts == {"Import": 2, "MotionCorr": 2}
    assert "working" in (project / "MotionCorr/job002/run.out").read_text()


def test_stop_ends_processes_in_their_own_session_that_ignore_sigterm(tmp_path, project):
    # As mpirun's ranks: a process group and session of their own, out of reach of the
    # pipeliner's process group; SIGTERM ignored.
    bin_dir = tmp_path / "bin"
    standin(bin_dir, "relion_run_motioncorr",
            "setsid sh -c 'trap \"\" TERM; touch rank_started; exec sleep 300' &\n"
            "exec sleep 300\n")
    settings = driver_settings(tmp_path, project, bin_dir)
    seen = []

    def should_stop() -> bool:
        if not (project / "rank_started").exists():
            return False
        seen.extend(_stubborn(pid) for pid in processes_in(project))
        return True

    started = time.monotonic()
    result = run_limited(settings, should_stop=should_stop)

    assert (result.outcome, result.reason) == ("stopped", "stop requested")
    assert any(seen), "the stand-in's rank was not running on its own, ignoring SIGTERM"
    assert nothing_left(project) == []
    assert time.monotonic() - started < 30
    assert not (project / pl.RUNNING_RELION_IT).exists()
    assert not list(project.glob(pl.RUNNING_PIPELINER + "*"))


def _stubborn(pid: int) -> bool:
    """True for a process that leads a session of its own and ignores SIGTERM."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            session = int(handle.read().rsplit(")", 1)[1].split()[3])
        with open(f"/proc/{pid}/status") as handle:
            ignored = next(int(line.split()[1], 16) for line in handle
                           if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return session == pid and bool(ignored & (1 << (15 - 1)))


def test_ending_a_run_spares_the_caller_its_ancestors_and_their_groups():
    # In processes of their own: if they were signalled, only they would die.
    child = ("import os; from relion_zo.relion_it.driver import end_processes; "
             "end_processes({os.getpid(), os.getppid()}, "
             "{os.getpgrp(), os.getpgid(os.getppid())}, grace=0.2); print('child alive')")
    parent = ("import subprocess, sys; "
              f"r = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
              "text=True); print(r.stdout.strip(), r.returncode); print('parent alive')")
    ran = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                         timeout=60, start_new_session=True, check=False)
    assert ran.stdout.splitlines() == ["child alive 0", "parent alive"], ran.stderr


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def test_leftovers_are_what_the_run_started_not_whatever_works_in_the_project(tmp_path):
    # A scientist's shell in the project is not RELION's: only marked processes are ended.
    project = tmp_path / "project"
    project.mkdir()
    mark = {**os.environ, PROJECT_MARKER: project_mark(project)}
    theirs = subprocess.Popen(["sleep", "300"], cwd=project)
    ours = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 300"], cwd=project,
                            env=mark, start_new_session=True)
    try:
        # until the shell has set its trap and become sleep: while it execs, its /proc files
        # can be unreadable for a moment (a flake seen once in CI)
        deadline = time.monotonic() + 10
        while _comm(ours.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        (project / pl.RUNNING_RELION_IT).touch()
        assert end_relion_in(project) == 1
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert theirs.poll() is None
        assert not (project / pl.RUNNING_RELION_IT).exists()
    finally:
        for proc in (theirs, ours):
            proc.kill()
            proc.wait()
