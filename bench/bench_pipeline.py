"""Benchmark of relion_it's whole pipeline, both passes, on the demo's data: time per job, the
driver's own overhead, and how long a stop takes while Class2D, InitialModel and the second
pass's Class2D run.

Run by hand (no database or broker needed; RELION and relion-zo-ctffind-aspire must be
installed):  python bench/bench_pipeline.py [--movies 4]

The demo's movies (``devstack.particles``, 1024x1024 at 2 Å, 8 frames, about 115 particles each)
and the demo's settings (``devstack.demo``: DEMO_PARAMETERS over DEMO_SITE_DEFAULTS) go through
``run_driver`` in a temporary folder:

1. one run to the end: each RELION job's time runs from the pipeliner's "Executing" line (to
   the second) to its ``RELION_JOB_EXIT_SUCCESS``, per job (by relion_it's name); the second
   pass's reference rescaling (``relion_image_handler``) counts with RELION's commands; the
   driver's own time is the run's wall time minus the time spent in RELION's commands
   (``--addJob`` and the pipeliner runs, ``Progress.relion_seconds``), and the pipeliner's
   share is the time of its runs minus the jobs' time (starting jobs, noticing their ends);
   and how long after its motion-corrected micrograph was written each movie's results were handed
   to the recorder (``run_driver``'s ``on_results``, which the wrapper calls before the
   heartbeat; the rows' write is timed by ``bench/bench_results.py``);
2. a second project on the same movies (``--no-stops`` leaves it out): the run is stopped
   (``should_stop`` turns true) 3 s after Class2D starts, then carried on (finished jobs
   reused) and stopped 3 s after InitialModel starts, and again 3 s after the second pass's
   Class2D starts; the time from ``should_stop`` first turning true to ``run_driver``
   returning, with nothing left running in the project, is the driver's share of a stop (a
   Stop pressed in a web UI adds up to a second for the wrapper to see the request in ISPyB).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from relion_zo import parameters
from relion_zo.config import Executables, SiteConfig
from relion_zo.devstack import particles
from relion_zo.devstack.demo import CTFFIND_STANDIN, DEMO_PARAMETERS, DEMO_SITE_DEFAULTS
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.calculate import with_calculated
from relion_zo.relion_it.driver import DriverSettings, processes_in, run_driver
from relion_zo.relion_it.stages import BatchPlan, check_capabilities, second_pass, stages

GLOB = "Movies/*.mrc"


def settings(project: Path) -> DriverSettings:
    given = {k: v for k, v in DEMO_PARAMETERS.items() if k != "motioncor_gainreference"}
    params = with_calculated(parameters.parse(given, DEMO_SITE_DEFAULTS))
    ctffind = shutil.which(CTFFIND_STANDIN)
    site = SiteConfig(data_roots=[project.parent], visit_directory=str(project.parent),
                      executables=Executables(ctffind=ctffind))
    check_capabilities(params, site)
    return DriverSettings(project=project, stages=tuple(stages(params, site, GLOB, "")),
                          movie_glob=GLOB, idle_seconds=0, batches=BatchPlan(params),
                          second_pass=second_pass(params))


def job_seconds(project: Path) -> dict[str, float]:
    """Seconds per job, by relion_it's name, summed over every time a pipeliner ran it (a job
    of the preprocessing schedule runs once a pass): from its "Executing <job>" line (the
    schedule's log, ``pipeline_<schedule>.log``, stamped to the second) to the next job's, or
    for the last job of a run to its exit file (when that run was the job's latest; the
    earlier last jobs are the split Select job's, under a second each)."""
    names = {job: name for name, job in pl.read_submitted(project).items()}
    totals: dict[str, float] = defaultdict(float)
    runs: list[list[tuple[float, str]]] = []
    for log in project.glob("pipeline_*.log"):
        lines = log.read_text().splitlines()
        for stamp, line in zip(lines, lines[1:]):  # " + <ctime()>" then " ---- Executing <job>"
            if line.startswith(" Starting a new scheduler"):
                runs.append([])
            elif line.startswith(" ---- Executing ") and stamp.startswith(" + ") and runs:
                runs[-1].append((time.mktime(time.strptime(stamp[3:].strip(),
                                                           "%a %b %d %H:%M:%S %Y")),
                                 line.split("Executing ", 1)[1].strip()))
    latest: dict[str, float] = {}
    for run in runs:
        for began, job in run:
            latest[job] = max(began, latest.get(job, began))
    for run in runs:
        for (began, job), (after, _) in zip(run, run[1:]):
            totals[job] += after - began
        if run and run[-1][0] == latest[run[-1][1]]:  # the exit file is of this execution
            began, job = run[-1]
            end = project / job / pl.EXIT_SUCCESS
            if end.exists():
                totals[job] += max(0.0, end.stat().st_mtime - began)
    return {f"{names.get(job, job)} ({job.split('/')[0]})": seconds
            for job, seconds in totals.items()}


def stop_during(project: Path, label: str, grace: float = 3.0) -> tuple[str, float, int]:
    """Run until ``label`` has been running for ``grace`` s, then ask to stop: (outcome,
    seconds from the request to the return, processes left in the project)."""
    asked: list[float] = []
    running_since: list[float] = []

    def on_tick(progress) -> None:
        if progress.batches.get(label, "").endswith("running") and not running_since:
            running_since.append(time.monotonic())

    def should_stop() -> bool:
        if running_since and time.monotonic() - running_since[0] >= grace:
            if not asked:
                asked.append(time.monotonic())
            return True
        return False

    result = run_driver(replace(settings(project), tick_seconds=0.2),
                        should_stop=should_stop, on_tick=on_tick, note=lambda m: None)
    took = time.monotonic() - asked[0] if asked else float("nan")
    return result.outcome, took, len(processes_in(project))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=4)
    parser.add_argument("--no-stops", action="store_true", help="the first run only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        made = time.monotonic()
        particles.write_particle_movies(root / "raw", args.movies, seed=1)
        print(f"{args.movies} movies written in {time.monotonic() - made:.1f} s")
        project = root / "project"
        project.mkdir()
        (project / "Movies").symlink_to(root / "raw")
        handed: dict[str, float] = {}

        def on_results(jobs: dict[str, str]) -> None:
            now = time.time()
            star = project / jobs.get("motioncorr_job", "-/") / "corrected_micrographs.star"
            for name in pl.star_column(star, "micrographs", "_rlnMicrographName"):
                path = project / name
                if name not in handed and path.exists():
                    handed[name] = now - path.stat().st_mtime

        started = time.monotonic()
        result = run_driver(settings(project), note=lambda m: None, on_results=on_results)
        wall = time.monotonic() - started
        print(f"outcome: {result.outcome} ({result.reason}): {result.progress.text()}")
        if result.outcome != "finished":  # keep what tells why
            kept = Path(tempfile.gettempdir()) / "bench-pipeline-failed"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(project, kept, symlinks=True,
                            ignore=shutil.ignore_patterns("*.mrc", "*.mrcs"))
            print(f"the project's files (no images) are kept in {kept}")
        jobs = job_seconds(project)
        relion = result.progress.relion_seconds
        print(f"wall {wall:.1f} s; in RELION's commands {relion:.1f} s, of which jobs "
              f"{sum(jobs.values()):.1f} s; outside them (the driver) {wall - relion:.1f} s")
        for job, seconds in jobs.items():
            print(f"  {job:<44} {seconds:6.1f} s")
        lags = sorted(handed.values())
        if lags:
            print(f"micrograph written -> handed to the recorder: median "
                  f"{lags[len(lags) // 2]:.1f} s, longest {lags[-1]:.1f} s ({len(lags)} movies)")
        if args.no_stops:
            return

        # The stops: a second project on the same movies
        again = root / "again"
        again.mkdir()
        (again / "Movies").symlink_to(root / "raw")
        for label in ("Class2D", "InitialModel", "Class2D pass 2"):
            outcome, took, left = stop_during(again, label)
            print(f"stop during {label}: {outcome} {took:.2f} s after the request, "
                  f"{left} processes left")


if __name__ == "__main__":
    main()
