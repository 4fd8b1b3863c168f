"""Benchmark of the job store on the local stack: Start latency and status queries.

Run by hand after `relion-zo stack up`:  python bench/bench_store.py [--jobs 500]
It writes a throw-away visit with real commits and deletes it afterwards. Results and method
go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from relion_zo import jobs, programs, status
from relion_zo.config import SiteConfig
from relion_zo.db import make_engine
from relion_zo.devstack import stack, synthetic
from relion_zo.devstack.demo import remove_visit, seed_visit

PARAMS = {"angpix": "1.0", "voltage": "300", "Cs": "2.7", "motioncor_doseperframe": "1.0",
          "stop_after_motion_correction": "true"}


def cleanup(engine, session_id):
    with Session(engine) as db:
        remove_visit(db, session_id)


def throwaway_job(engine, site, data: Path, sessions: list[int], *, movies: int = 4,
                  gain: bool = False, **params) -> tuple[int, Path]:
    """A new visit (its session id appended to ``sessions`` for ``cleanup``) with ``movies``
    demo-sized movies (512x512, 8 frames), and a Start for them. Returns the job id and the
    project folder its run will use."""
    visit = f"zb{uuid.uuid4().int % 10**8:08d}-1"
    with Session(engine) as db:
        sessions.append(seed_visit(db, visit, start=dt.datetime(2026, 1, 1)))
    visit_dir = data / "2026" / visit
    synthetic.write_movies(visit_dir / "raw", movies, size=512, frames=8)
    if gain:
        synthetic.write_gain(visit_dir / "processing" / "gain.mrc", size=512)
        params["motioncor_gainreference"] = "gain.mrc"
    with Session(engine) as db:
        pjid = jobs.start_job(db, site, {**PARAMS, **params}, visit=visit,
                              image_directory=str(visit_dir / "raw"),
                              file_template="*.mrc").processing_job_id
    return pjid, visit_dir / "processed" / f"relion_{pjid}"


def ms(values):
    values = sorted(values)
    return (f"median {statistics.median(values) * 1000:.2f} ms, "
            f"p95 {values[int(0.95 * (len(values) - 1))] * 1000:.2f} ms (n={len(values)})")


# One MPI process, as a 2-core machine needs (relion_it's own defaults are 4 x 6 threads).
MACHINE = {"motioncor_mpi": 1, "motioncor_threads": 1, "ctffind_mpi": 1}


def bench_site(data: Path, settings, **values) -> SiteConfig:
    """A site on the local stack whose commands use each side's least-privileged user."""
    return SiteConfig(data_roots=[data], visit_directory=str(data) + "/{year}/{visit}",
                      ispyb_credentials=settings.processing_credentials_path,
                      ispyb_web_credentials=settings.web_credentials_path,
                      relion_it_defaults=MACHINE, **values)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    settings = stack.StackSettings.from_env()
    engine = make_engine(settings.credentials_path)
    name = f"bb{uuid.uuid4().int % 10**8:08d}-1"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        site = bench_site(data, settings)
        raw = data / "2026" / name / "raw"
        with Session(engine) as db:
            session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
        try:
            start_times = []
            for i in range(args.jobs):
                synthetic.write_gain(raw / f"dc{i}_1.mrc", size=8)
                t0 = time.perf_counter()
                with Session(engine, expire_on_commit=False) as db:
                    result = jobs.start_job(db, site, PARAMS, visit=name, image_directory=str(raw),
                                            file_template=f"dc{i}_*.mrc")
                start_times.append(time.perf_counter() - t0)
                with Session(engine) as db:  # mix of states: half finished, some running
                    if i % 2 == 0:
                        app = programs.register(db, result.processing_job_id)
                        programs.mark_running(db, app)
                        if i % 4 == 0:
                            programs.finish(db, app, success=True, message="done")
            print(f"start_job (new data collection, {args.jobs} jobs): {ms(start_times)}")
            for label, kw in (("visit", {"session_id": session_id}),
                              ("one job", {"processing_job_id": result.processing_job_id})):
                times = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    with Session(engine) as db:
                        rows = status.query_states(db, stale_seconds=30, **kw)
                    times.append(time.perf_counter() - t0)
                print(f"status of {label} ({len(rows)} jobs, job_status.sql): {ms(times)}")
        finally:
            cleanup(engine, session_id)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
