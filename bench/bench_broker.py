"""Benchmark of the broker path on the local stack: Start -> Dispatcher -> worker -> RELION.

Run by hand:  python bench/bench_broker.py [--jobs 6]

1. Latency: one job at a time (4 movies, 512x512, 8 frames, as the demo; idle_seconds 0), one
   worker. Times are taken from the moment the Start message is sent to the moment ISPyB shows
   the job queued (a worker claimed it), running (the wrapper process marked it) and final,
   by polling the job's state every 20 ms.
2. Throughput: N jobs sent at once, to 1 worker running 1 job at a time, then to 2 workers:
   wall time until all are final.
3. Stop: a 12-movie job with no idle end; when motion correction is running, ``relion-zo stop``'s
   message is sent; time until ISPyB shows ``stopped``.

Visits are deleted afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store import bench_site, cleanup, throwaway_job  # noqa: E402

from relion_zo import broker, control  # noqa: E402
from relion_zo.db import make_engine  # noqa: E402
from relion_zo.devstack import stack  # noqa: E402
from relion_zo.devstack.services import LocalServices  # noqa: E402
from relion_zo.relion_it.driver import processes_in  # noqa: E402
from relion_zo.status import FINAL_STATES  # noqa: E402

def watch(engine, site, pjids, limit=300.0) -> dict[int, dict[str, float]]:
    """First time (monotonic) each job was seen in each state, until all are final."""
    seen: dict[int, dict[str, float]] = {p: {} for p in pjids}
    deadline = time.monotonic() + limit
    with Session(engine) as db:
        while time.monotonic() < deadline:
            for pjid in pjids:
                state = control.job_state(db, site, pjid).state
                seen[pjid].setdefault(state, time.monotonic())
            db.rollback()
            if all(FINAL_STATES & set(s) for s in seen.values()):
                return seen
            time.sleep(0.02)
    raise RuntimeError(f"jobs not final after {limit} s: {seen}")


def final_time(states: dict[str, float]) -> float:
    return min(t for s, t in states.items() if s in FINAL_STATES)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    settings = stack.StackSettings.from_env()
    stack.up(settings)
    zocalo = settings.zocalo_config_path
    engine = make_engine(settings.credentials_path)
    sessions: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        site = bench_site(data, settings, idle_seconds=0, heartbeat_seconds=5,
                          zocalo_config=zocalo)
        site_file = Path(tmp) / "site.yaml"
        site_file.write_text(yaml.safe_dump(site.model_dump(mode="json")))
        try:
            with LocalServices(site_file, zocalo, Path(tmp) / "logs") as services:
                services.dispatcher()
                services.worker()
                rows = []
                for _ in range(args.runs):
                    pjid, _ = throwaway_job(engine, site, data, sessions)
                    sent = time.monotonic()
                    broker.send(zocalo, [broker.recipe_message("relion", pjid)])
                    seen = watch(engine, site, [pjid])[pjid]
                    assert "success" in seen, seen
                    rows.append({k: seen[k] - sent for k in ("queued", "running", "success")
                                 if k in seen})
                    print(f"latency: {rows[-1]}", flush=True)
                for key in ("queued", "running", "success"):
                    values = [r[key] for r in rows if key in r]
                    print(f"send -> {key}: median {statistics.median(values):.2f} s "
                          f"(n={len(values)})")

                for workers in (1, 2):
                    if workers == 2:
                        services.worker()
                    pjids = [throwaway_job(engine, site, data, sessions)[0] for _ in range(args.jobs)]
                    sent = time.monotonic()
                    broker.send(zocalo, [broker.recipe_message("relion", p) for p in pjids])
                    seen = watch(engine, site, pjids)
                    assert all("success" in s for s in seen.values())
                    wall = max(final_time(s) for s in seen.values()) - sent
                    print(f"{args.jobs} jobs, {workers} worker(s): {wall:.2f} s "
                          f"({wall / args.jobs:.2f} s a job)", flush=True)

                long_site = site.model_copy(update={"idle_seconds": 3600})
                long_file = Path(tmp) / "site-long.yaml"
                long_file.write_text(yaml.safe_dump(long_site.model_dump(mode="json")))
            stops = []
            with LocalServices(long_file, zocalo, Path(tmp) / "logs2") as services:
                services.dispatcher()
                services.worker()
                for _ in range(args.runs):
                    pjid, project = throwaway_job(engine, long_site, data, sessions, movies=12)
                    broker.send(zocalo, [broker.recipe_message("relion", pjid)])
                    while not processes_in(project, "relion_run_mot"):
                        time.sleep(0.005)
                    sent = time.monotonic()
                    broker.send(zocalo, [broker.recipe_message("relion-stop", pjid)])
                    seen = watch(engine, long_site, [pjid])[pjid]
                    assert "stopped" in seen, seen
                    stops.append(seen["stopped"] - sent)
                    print(f"stop sent -> stopped: {stops[-1]:.2f} s", flush=True)
            print(f"stop sent -> stopped: median {statistics.median(stops):.2f} s, "
                  f"max {max(stops):.2f} s")
        finally:
            for session_id in sessions:
                cleanup(engine, session_id)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
