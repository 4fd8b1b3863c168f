"""Concurrent Starts (real commits, each with its own connection): exactly one job per data
collection, the "already active" answer for every other Start, and no waiting between Starts
for different data collections of one visit."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from conftest import GOOD_PARAMS, new_visit_name
from ispyb.sqlalchemy import DataCollection, ProcessingJob
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from relion_zo import jobs
from relion_zo.db import make_engine
from relion_zo.devstack import synthetic
from relion_zo.devstack.demo import remove_visit, seed_visit
from relion_zo.errors import ActiveJobError
from relion_zo.retry import DatabaseUnavailable

STARTS = 100
MOVIES = 150
FOLDERS = 8
RACE_LIMIT = 120  # seconds; a guard against a hang, not a speed check


def _cleanup(engine, session_id: int) -> None:
    with Session(engine) as db:
        remove_visit(db, session_id)


def test_concurrent_starts_make_one_job(engine, web_engine, site):
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

            def press_start(db, template=template):
                return jobs.start_job(db, site, GOOD_PARAMS, visit=name,
                                      image_directory=str(raw), file_template=template)

            _one_job_and_refusals(_race(web_engine, [press_start] * 2))
        dcs, pjs = _jobs_of(engine, session_id)
        assert len(dcs) == rounds and len(pjs) == rounds
    finally:
        _cleanup(engine, session_id)


def _engine(stack_settings, lock_wait: int | None = None):
    """An engine whose every Session has a connection of its own (no pool to queue on)."""
    connect_args = {}
    if lock_wait is not None:
        connect_args["init_command"] = f"SET SESSION innodb_lock_wait_timeout = {lock_wait}"
    return make_engine(stack_settings.web_credentials_path, poolclass=NullPool,
                       connect_args=connect_args)


def _race(engine, starts: list) -> list[object]:
    """Run every ``start(db)`` at the same moment, each in a thread with its own session;
    returns each one's result or exception."""
    barrier = threading.Barrier(len(starts))
    outcomes: list[object] = [None] * len(starts)

    def press(index, start):
        with Session(engine, expire_on_commit=False) as db:
            barrier.wait()
            try:
                outcomes[index] = start(db)
            except Exception as exc:  # noqa: BLE001 - every outcome is looked at
                outcomes[index] = exc

    threads = [threading.Thread(target=press, args=(i, s)) for i, s in enumerate(starts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RACE_LIMIT)
    assert not any(t.is_alive() for t in threads), f"Starts still running after {RACE_LIMIT} s"
    return outcomes


def _jobs_of(engine, session_id: int) -> tuple[list[int], list[tuple[int, int]]]:
    with Session(engine) as db:
        dcs = db.execute(select(DataCollection.dataCollectionId).where(
            DataCollection.SESSIONID == session_id)).scalars().all()
        pjs = db.execute(select(ProcessingJob.processingJobId, ProcessingJob.dataCollectionId)
                         .where(ProcessingJob.dataCollectionId.in_(dcs))).all()
    return list(dcs), [tuple(row) for row in pjs]


def test_hundred_concurrent_starts_make_one_job(engine, site, stack_settings):
    name = new_visit_name()
    with Session(engine) as db:
        session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
    raw = site.data_roots[0] / "2026" / name / "raw"
    # Enough movies that Start's checks take a while, as a real session's thousands do.
    synthetic.write_movies(raw, MOVIES, size=64, frames=2)
    synthetic.write_movies(raw, MOVIES, size=64, frames=2, prefix="known")
    # Lock waits give up after 1 s, so that a lock held through the checks makes Starts fail
    # (1205) here as it did under load in production; a Start tries again after one.
    racers = _engine(stack_settings, lock_wait=1)
    try:
        # Round 1: the data collection does not exist yet; every Start names the folder.
        def by_folder(template):
            return lambda db: jobs.start_job(db, site, GOOD_PARAMS, visit=name,
                                             image_directory=str(raw), file_template=template)

        outcomes = _race(racers, [by_folder("movie_*.mrc")] * STARTS)
        _one_job_and_refusals(outcomes)
        assert [o.created_data_collection for o in outcomes
                if isinstance(o, jobs.StartResult)] == [True]
        assert _lock_is_free(engine, jobs.folder_lock_name(session_id, raw, "movie_*.mrc"))

        # Round 2: the data collection exists; half the Starts name it, half its folder.
        with Session(engine) as db:
            known = jobs._create_data_collection(db, session_id, raw, "known_*.mrc")
            db.commit()

        def by_id(db):
            return jobs.start_job(db, site, GOOD_PARAMS, data_collection_id=known)

        outcomes = _race(racers, [by_id, by_folder("known_*.mrc")] * (STARTS // 2))
        started = _one_job_and_refusals(outcomes)
        assert started.data_collection_id == known

        dcs, pjs = _jobs_of(engine, session_id)
        assert len(dcs) == 2 and len(pjs) == 2 and {dc for _, dc in pjs} == set(dcs)
    finally:
        racers.dispose()
        _cleanup(engine, session_id)


def _lock_is_free(engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT IS_FREE_LOCK(:name)"), {"name": name}).scalar() == 1


def test_a_start_on_a_callers_connection_releases_its_lock(db, engine, site, visit):
    # The session of a caller that owns its connection (here: a rolled-back test transaction).
    result = jobs.start_job(db, site, GOOD_PARAMS, visit=visit.name,
                            image_directory=str(visit.raw), file_template=visit.template)
    assert result.created_data_collection
    assert _lock_is_free(engine, jobs.folder_lock_name(visit.session_id, visit.raw,
                                                       visit.template))


def _one_job_and_refusals(outcomes: list[object]) -> jobs.StartResult:
    started = [o for o in outcomes if isinstance(o, jobs.StartResult)]
    refused = [o for o in outcomes if isinstance(o, ActiveJobError)]
    others = [o for o in outcomes if o not in started and o not in refused]
    assert others == [], others[:3]
    assert len(started) == 1 and len(refused) == len(outcomes) - 1
    assert {r.processing_job_id for r in refused} == {started[0].processing_job_id}
    return started[0]


def test_starts_for_different_data_collections_do_not_wait_for_each_other(
        engine, site, stack_settings):
    name = new_visit_name()
    with Session(engine) as db:
        session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
    visit_dir = site.data_roots[0] / "2026" / name
    folders = [visit_dir / f"grid{i}" for i in range(FOLDERS)]
    for folder in folders:
        synthetic.write_movies(folder, 1, size=64, frames=2)
    racers = _engine(stack_settings)
    impatient = _engine(stack_settings, lock_wait=1)  # a lock wait fails after 1 s ...
    holders = []
    try:
        # Many data collections of one visit at once: every one gets its job.
        outcomes = _race(racers, [
            (lambda db, f=folder: jobs.start_job(db, site, GOOD_PARAMS, visit=name,
                                                  image_directory=str(f),
                                                  file_template="*.mrc"))
            for folder in folders
        ])
        assert all(isinstance(o, jobs.StartResult) for o in outcomes), outcomes
        assert len({o.data_collection_id for o in outcomes}) == FOLDERS

        # Two Starts hold their transactions open: one creating the data collection of a new
        # folder (its named lock and new row), one for a data collection that exists (its row).
        for folder in (visit_dir / "held_new", visit_dir / "held_known"):
            synthetic.write_movies(folder, 1, size=64, frames=2)
        with Session(engine) as db:
            known = jobs._create_data_collection(db, session_id, visit_dir / "held_known",
                                                 "*.mrc")
            free_known = jobs._create_data_collection(db, session_id, visit_dir / "free_known",
                                                      "*.mrc")
            db.commit()
        synthetic.write_movies(visit_dir / "free_known", 1, size=64, frames=2)
        for where in ({"visit": name, "image_directory": str(visit_dir / "held_new"),
                       "file_template": "*.mrc"},
                      {"data_collection_id": known}):
            holder = Session(engine)
            holders.append(holder)
            plan = jobs.plan_start(holder, site, GOOD_PARAMS, **where)
            jobs.write_start(holder, site, plan)  # not committed: its locks stay held

        def impatient_start(**where):  # ... and is not tried again
            with Session(impatient) as db:
                return jobs.start_job(db, site, GOOD_PARAMS, retry_seconds=0, **where)

        # What the held Starts lock really blocks: their own data collections.
        with pytest.raises(DatabaseUnavailable):
            impatient_start(visit=name, image_directory=str(visit_dir / "held_new"),
                            file_template="*.mrc")
        with pytest.raises(DatabaseUnavailable):
            impatient_start(data_collection_id=known)
        # Nothing else of the visit waits for them: a new folder, an existing data collection.
        synthetic.write_movies(visit_dir / "free_new", 1, size=64, frames=2)
        new = impatient_start(visit=name, image_directory=str(visit_dir / "free_new"),
                              file_template="*.mrc")
        assert new.created_data_collection
        assert impatient_start(data_collection_id=free_known).data_collection_id == free_known

        for holder in holders:
            holder.commit()
        with pytest.raises(ActiveJobError):
            impatient_start(visit=name, image_directory=str(visit_dir / "held_new"),
                            file_template="*.mrc")
        with pytest.raises(ActiveJobError):
            impatient_start(data_collection_id=known)
        dcs, pjs = _jobs_of(engine, session_id)
        assert len(dcs) == FOLDERS + 4 and len(pjs) == FOLDERS + 4
    finally:
        for holder in holders:
            holder.close()
        racers.dispose()
        impatient.dispose()
        _cleanup(engine, session_id)
