"""Two Starts for one data collection at the same moment: exactly one job (real commits)."""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from conftest import GOOD_PARAMS, new_visit_name
from ispyb.sqlalchemy import DataCollection, ProcessingJob
from relion_zo import jobs, synthetic
from relion_zo.demo import remove_visit, seed_visit
from relion_zo.errors import ActiveJobError


def _cleanup(engine, session_id: int) -> None:
    with Session(engine) as db:
        remove_visit(db, session_id)


def test_concurrent_starts_make_one_job(engine, site):
    name = new_visit_name()
    with Session(engine) as db:
        session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
    raw = site.data_roots[0] / "2026" / name / "raw"
    synthetic.write_movies(raw, 1, size=64, frames=2)
    rounds = 5
    try:
        for n in range(rounds):
            template = "movie_0001.mrc" if n == 0 else f"round{n}_*.mrc"
            if n:
                (raw / f"round{n}_1.mrc").write_bytes(b"")
            barrier = threading.Barrier(2)
            outcomes: list[object] = []

            def press_start():
                with Session(engine, expire_on_commit=False) as db:
                    barrier.wait()
                    try:
                        outcomes.append(jobs.start_job(
                            db, site, GOOD_PARAMS, visit=name, image_directory=str(raw),
                            file_template=template))
                    except ActiveJobError as exc:
                        outcomes.append(exc)

            threads = [threading.Thread(target=press_start) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            started = [o for o in outcomes if isinstance(o, jobs.StartResult)]
            refused = [o for o in outcomes if isinstance(o, ActiveJobError)]
            assert len(started) == 1 and len(refused) == 1, outcomes
            assert refused[0].processing_job_id == started[0].processing_job_id
        with Session(engine) as db:
            dcs = db.execute(select(DataCollection.dataCollectionId).where(
                DataCollection.SESSIONID == session_id)).scalars().all()
            pjs = db.execute(select(ProcessingJob.processingJobId).where(
                ProcessingJob.dataCollectionId.in_(dcs))).scalars().all()
        assert len(dcs) == rounds and len(pjs) == rounds
    finally:
        _cleanup(engine, session_id)
