"""Benchmark of writing a job's results into ISPyB (``JobManager.record_results``) on the local
stack, with the processing side's least-privileged user.

Run by hand after `relion-zo stack up`:  python bench/bench_results.py [--movies 1000]

A throw-away visit and job (deleted afterwards) get the results of ``--movies`` movies, each
with its motion correction, CTF and two pickers (LoG and a second pass), and one 2D
classification of 50 classes, in one ``record_results`` call: one transaction, as a pass that
found that many new movies would write them. Then the same results again (what a re-read, a
redelivered message or a resume costs: lookups, no rows), then 10 new movies into the
now-large job (a pass of a streaming session). Each is timed from the call to its return;
the database time is that minus the client's own time (``time.process_time``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from relion_zo import jobs, results
from relion_zo.db import make_engine
from relion_zo.devstack import stack, synthetic
from relion_zo.devstack.demo import remove_visit, seed_visit
from relion_zo.manager import JobManager

sys.path.insert(0, str(Path(__file__).parent))
from bench_store import PARAMS, bench_site  # noqa: E402


def movie(number: int) -> results.MovieResult:
    name = f"/data/2026/visit/raw/GridSquare_{number // 100}/Data/movie_{number:05d}.tiff"
    return results.MovieResult(
        number=number, movie=name, created=dt.datetime(2026, 12, 7, 3, 0, number % 60),
        frames=40, micrograph=name.replace("/raw/", "/processed/MotionCorr/"),
        first_frame=1, last_frame=40, dose_per_frame=1.0, total_motion=10 + number % 7,
        early_motion=2.0, late_motion=8.0, drift=(),
        ctf=results.CtfResult(15000 + number, 14500 + number, 45.0, 4.5, 0.2, name + ".ctf"),
        picks=(results.PickResult("LoG", "AutoPick/job004/", 300),
               results.PickResult("3D reference x.mrc", "AutoPick/job010/", 250)))


def job_results(dcid: int, numbers: range, classes: bool) -> results.JobResults:
    classification = results.ClassificationResult(
        "Class2D/job007/", "2D", 1, 10000, 3.0, "C1", tuple(
            results.ClassResult(n, f"{n}@/p/Class2D/job007/run_it020_classes.mrcs", 0.02, 2.0,
                                1.0, 8.0, 1.0) for n in range(1, 51)))
    return results.JobResults(
        dcid=dcid, project="/p", patches=(5, 5),
        search={"box": 512, "minres": 30, "maxres": 5, "defocus_min": 5000,
                "defocus_max": 50000, "defocus_step": 500, "amplitude_contrast": 0.1,
                "particle_diameter": 180},
        movies=tuple((movie(n), results.MovieFiles()) for n in numbers),
        classifications=((classification, 50),) if classes else ())


def timed(manager: JobManager, program: int, found: results.JobResults) -> tuple[float, float,
                                                                                dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    added = manager.record_results(program, found)
    return time.perf_counter() - wall, time.process_time() - cpu, added


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--movies", type=int, default=1000)
    args = parser.parse_args()
    settings = stack.StackSettings.from_env()
    admin = make_engine(settings.credentials_path)
    web = make_engine(settings.web_credentials_path)
    processing = make_engine(settings.processing_credentials_path)
    visit = f"zr{uuid.uuid4().int % 10**8:08d}-1"
    with Session(admin) as db:
        session_id = seed_visit(db, visit, start=dt.datetime(2026, 1, 1))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            site = bench_site(data, settings)
            raw = data / "2026" / visit / "raw"
            synthetic.write_movies(raw, 1, size=64, frames=2)
            with Session(web) as db:
                spec = jobs.start_job(db, site, PARAMS, visit=visit, image_directory=str(raw),
                                      file_template="*.mrc")
            manager = JobManager(processing, site, retry_seconds=0)
            program = manager.claim(spec.processing_job_id, command_line="bench",
                                    environment="bench")
            dcid = spec.data_collection_id
            for what, numbers, classes in (
                    (f"{args.movies} new movies and 50 classes", range(1, args.movies + 1),
                     True),
                    ("the same again (re-read, redelivery, resume)",
                     range(1, args.movies + 1), True),
                    ("10 new movies into that job", range(args.movies + 1, args.movies + 11),
                     False)):
                wall, cpu, added = timed(manager, program,
                                         job_results(dcid, numbers, classes))
                rows = sum(added.values())
                print(f"{what}: {wall:.3f} s ({wall - cpu:.3f} s outside this process), "
                      f"{rows} rows added")
    finally:
        with Session(admin) as db:
            remove_visit(db, session_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
