"""Benchmark of the wrapper's own cost around RELION: the demo job, run by ``relion-zo run``.

Run by hand after ``relion-zo stack up``:  python bench/bench_run.py [--runs 5]

Each run: a throw-away visit with the demo's movies (4 movies, 512x512, 8 frames, a gain
reference), Start, then ``relion-zo run`` in a child process with ``idle_seconds: 0`` (the job
ends as soon as every movie is motion corrected). The child reports the wall time RELION's own
commands took (``relion_pipeliner --addJob`` and the scheduler passes, which include the
motion correction processes) and its own peak RSS; the parent times the whole command.
Overhead = wall time of the command - RELION's time. Rows are deleted afterwards.

``--stops N`` measures the stop instead: a job of 12 movies (512x512, 8 frames) runs in a
thread; as soon as ``relion_run_motioncorr`` works in the project, ``RUNNING_RELION_IT`` is
removed (what ``relion-zo stop`` does) and the time until ``run_job`` has returned with
``stopped`` written and no process left in the project is taken.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import bench_site, cleanup, throwaway_job  # noqa: E402

from relion_zo.config import load_config  # noqa: E402
from relion_zo.db import make_engine  # noqa: E402
from relion_zo.devstack import stack  # noqa: E402
from relion_zo.relion_it.driver import processes_in  # noqa: E402


def one(config_path: str, pjid: int) -> None:
    """The child: what ``relion-zo run`` does, plus the figures."""
    from relion_zo.runner import run_job_until_signalled

    config = load_config(config_path)
    engine = make_engine(config.credentials_path())
    seen = []
    outcome = run_job_until_signalled(pjid, engine=engine, config=config,
                                      on_progress=seen.append)
    engine.dispose()
    progress = seen[-1]
    print(json.dumps({
        "state": outcome.state,
        "message": outcome.message,
        "relion_seconds": progress.relion_seconds,
        "passes": progress.passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stops", type=int, default=0, help="measure N stops instead")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "PJID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]))
        return 0

    settings = stack.StackSettings.from_env()
    stack.up(settings)
    engine = make_engine(settings.credentials_path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        site = bench_site(data, settings, idle_seconds=0, heartbeat_seconds=5)
        config_path = Path(tmp) / "site.yaml"
        config_path.write_text(yaml.safe_dump(site.model_dump(mode="json")))
        if args.stops:
            return measure_stops(engine, site, data, args.stops)
        sessions: list[int] = []
        try:
            for run in range(args.runs):
                pjid, _ = throwaway_job(engine, site, data, sessions, gain=True,
                                        motioncor_patches_x="1", motioncor_patches_y="1")
                started = time.monotonic()
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(config_path), str(pjid)],
                    capture_output=True, text=True, check=True,
                )
                wall = time.monotonic() - started
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                assert figures["state"] == "success", figures
                figures["wall"] = wall
                figures["overhead"] = wall - figures["relion_seconds"]
                rows.append(figures)
                print(f"run {run + 1}: wall {wall:.2f} s, "
                      f"RELION {figures['relion_seconds']:.2f} s, "
                      f"overhead {figures['overhead']:.2f} s, peak RSS "
                      f"{figures['peak_rss_mb']:.0f} MB ({figures['message']})", flush=True)
        finally:
            for session_id in sessions:
                cleanup(engine, session_id)
    engine.dispose()

    def med(key):
        return statistics.median(r[key] for r in rows)

    print(f"median of {len(rows)}: wall {med('wall'):.2f} s, RELION {med('relion_seconds'):.2f} s, "
          f"overhead {med('overhead'):.2f} s, peak RSS {med('peak_rss_mb'):.0f} MB")
    return 0


def measure_stops(engine, site, data: Path, count: int) -> int:
    from relion_zo.relion_it.pipeliner import RUNNING_RELION_IT
    from relion_zo.runner import run_job

    site = site.model_copy(update={"idle_seconds": 3600})
    times = []
    sessions: list[int] = []
    try:
        for n in range(count):
            pjid, project = throwaway_job(engine, site, data, sessions, movies=12)
            outcome = []
            thread = threading.Thread(target=lambda: outcome.append(
                run_job(pjid, engine=engine, config=site)))
            thread.start()
            while not processes_in(project, "relion_run_mot"):  # motion correction at work
                time.sleep(0.005)
            started = time.monotonic()
            (project / RUNNING_RELION_IT).unlink()
            thread.join()
            elapsed = time.monotonic() - started
            assert outcome[0].state == "stopped" and not processes_in(project), outcome
            times.append(elapsed)
            print(f"stop {n + 1}: {elapsed:.3f} s ({outcome[0].message})", flush=True)
    finally:
        for session_id in sessions:
            cleanup(engine, session_id)
    print(f"stop to final status, median of {len(times)}: {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
