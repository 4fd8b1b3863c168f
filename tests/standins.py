"""Driver runs with real relion_pipeliner and relion_import, and a stand-in for the program a
RELION job runs: a script named like it, first in the PATH of the driver's environment. No
database: these test what the driver does with RELION's processes and files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from conftest import GOOD_PARAMS, TEST_MACHINE

from relion_zo import parameters
from relion_zo.config import SiteConfig
from relion_zo.devstack import synthetic
from relion_zo.relion_it.driver import DriverResult, DriverSettings, processes_in, run_driver
from relion_zo.relion_it.stages import stages

RUN_LIMIT = 90  # seconds; a guard against a hang, not a speed check
MOVIE_GLOB = "Movies/*.mrc"


def standin(bin_dir: Path, name: str, body: str) -> Path:
    """An executable shell script ``bin_dir/name`` running ``body``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def driver_settings(tmp_path: Path, project: Path, bin_dir: Path, movies: int = 2,
                    **overrides) -> DriverSettings:
    """Import + MotionCorr of ``movies`` tiny movies in ``project``; ``bin_dir`` leads PATH."""
    raw = tmp_path / "raw"
    if not raw.exists():
        synthetic.write_movies(raw, movies, size=64, frames=4)
    project.mkdir(parents=True, exist_ok=True)
    (project / "Movies").symlink_to(raw)
    site = SiteConfig(data_roots=[tmp_path], visit_directory=str(tmp_path) + "/{visit}")
    values = {
        "project": project,
        "stages": tuple(stages(parameters.parse(GOOD_PARAMS, TEST_MACHINE), site, MOVIE_GLOB,
                               "")),
        "movie_glob": MOVIE_GLOB,
        "env": {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        "repeat_times": 1,
        "idle_seconds": 0,
        "poll_seconds": 0.1,
        "dead_job_seconds": 2,
    }
    values.update(overrides)
    return DriverSettings(**values)


def run_limited(settings: DriverSettings, **kwargs) -> DriverResult:
    """``run_driver`` in a thread that must end within ``RUN_LIMIT``."""
    outcome: list[object] = []

    def run():
        try:
            outcome.append(run_driver(settings, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RUN_LIMIT)
    assert not thread.is_alive(), f"the driver still runs after {RUN_LIMIT} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def nothing_left(project: Path, limit: float = 5.0) -> list[int]:
    """Processes still working in ``project`` after waiting up to ``limit`` s for them to go."""
    deadline = time.monotonic() + limit
    while (left := processes_in(project)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_left(project: Path) -> None:
    """Teardown: SIGKILL, by pid, whatever a failed test left working in ``project``."""
    for pid in processes_in(project):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
