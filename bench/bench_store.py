"""Benchmark of the job store on the local stack: a visit's status and Start, by the visit's size.

Run by hand after `relion-zo stack up`:

    python bench/bench_store.py [--sizes 500 1000 10000 100000] [--layouts own shared]
                                [--indexes ispyb optional] [--starts 40] [--repeats 20]

For each layout it writes one throw-away visit per size, each of that many relion jobs in mixed
states, with bulk multi-row INSERTs (``fill_visit``; 100,000 jobs in about 20-30 s), so every
visit is in the database while any is measured. Then, for each visit, on the side each command
uses:

- the status of the visit as `relion-zo status --visit` asks for it (the visit's lookup and
  ``status.query_states``, one session), counting its SQL statements with SQLAlchemy's
  ``before_cursor_execute`` event; its states are checked against the ones written;
- the same answer from a per-job ORM loop (one query per job, entities loaded through the ORM),
  once, for the ratio; its states are checked against the status call's;
- ``jobs.start_job`` for new data collections of the visit (a movie of its own each), and for
  existing ones by id (a reprocessing of a data collection whose job ended), each with a fresh
  session, as the web side's user.

Layouts: ``own`` gives every data collection a folder of its own; ``shared`` puts all of a
visit's data collections in one folder, each with its own template (Start finds a data
collection by folder and template). ``--indexes optional`` applies
relion_zo/sql/optional_indexes.sql for the run and drops its indexes afterwards. The visits are
deleted at the end. Results and method go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import re
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ispyb.sqlalchemy import (
    AutoProcProgram,
    DataCollection,
    DataCollectionGroup,
    ProcessingJob,
    ProcessingJobParameter,
)
from sqlalchemy import delete, event, func, insert, select, text
from sqlalchemy.orm import Session

from relion_zo import jobs, status
from relion_zo.config import SiteConfig
from relion_zo.db import make_engine
from relion_zo.devstack import stack, synthetic
from relion_zo.devstack.demo import remove_visit, seed_visit
from relion_zo.visits import find_visit

PARAMS = {"angpix": "1.0", "voltage": "300", "Cs": "2.7", "motioncor_doseperframe": "1.0",
          "stop_after_motion_correction": "true"}
STALE_SECONDS = 3600.0  # running jobs stay running through a 100k-job run
CHUNK = 5000  # rows a multi-row INSERT (mysqlclient's executemany) carries
# The states of a filled visit, in turn. A data collection with a second (newer) job keeps its
# first job final, as Start's rule has it.
MIXED = ("submitted", "queued", "running", "lost", "success", "stopped", "failure")
FINAL = ("success", "failure", "stopped")
OTHER_RECIPES = ("em-spa-preprocess", "em-tomo-align")  # other pipelines' jobs in the visit
STATISTICS = ("DataCollection", "ProcessingJob", "ProcessingJobParameter", "AutoProcProgram")
OPTIONAL = "optional_indexes.sql"  # relion_zo/sql: indexes ISPyB lacks, for --indexes optional


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[int(0.95 * (len(values) - 1))]


# One MPI process, as a 2-core machine needs (relion_it's own defaults are 4 x 6 threads).
MACHINE = {"motioncor_mpi": 1, "motioncor_threads": 1, "ctffind_mpi": 1}


def bench_site(data: Path, settings, **values) -> SiteConfig:
    """A site on the local stack whose commands use each side's least-privileged user."""
    return SiteConfig(data_roots=[data], visit_directory=str(data) + "/{year}/{visit}",
                      ispyb_credentials=settings.processing_credentials_path,
                      ispyb_web_credentials=settings.web_credentials_path,
                      relion_it_defaults=MACHINE, **values)


def cleanup(engine, session_id):
    with Session(engine) as db:
        remove_visit(db, session_id)


def throwaway_job(engine, site, data: Path, sessions: list[int], *, movies: int = 4,
                  gain: bool = False, **params) -> tuple[int, Path]:
    """A new visit (its session id appended to ``sessions`` for ``cleanup``) with ``movies``
    demo-sized movies (512x512, 8 frames), and a Start for them. Returns the job id and the
    project folder its run will use. (Used by the other benchmarks.)"""
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


# ---------------------------------------------------------------------------- the visit
@dataclass
class Filled:
    """What ``fill_visit`` wrote: jobs by intended state, and data collections to reprocess."""

    jobs: int = 0
    other_jobs: int = 0
    data_collections: int = 0
    states: dict[int, str] = field(default_factory=dict)
    reprocess: list[tuple[int, Path]] = field(default_factory=list)  # (dcid, its movie)
    seconds: float = 0.0


def _bulk(db: Session, table, rows: list[dict]) -> None:
    """Multi-row INSERTs of ``CHUNK`` rows each: a Core executemany, which mysqlclient sends as
    multi-row INSERTs (the ORM's bulk path would split the rows wherever their NULLs differ)."""
    conn = db.connection()
    for start in range(0, len(rows), CHUNK):
        conn.execute(insert(table.__table__), rows[start:start + CHUNK])


def _program(pjid: int, state: str, now: dt.datetime) -> dict:
    hour = dt.timedelta(hours=1)
    row = {"processingJobId": pjid, "processingPrograms": "relion", "recordTimeStamp": now,
           "processingStartTime": None, "processingEndTime": None, "processingStatus": None,
           "processingMessage": None}
    if state == "queued":
        return row
    row.update(processingStartTime=now - hour, processingEndTime=now, processingMessage="running")
    if state == "lost":
        row["processingStartTime"] = now - 30 * hour
        row["processingEndTime"] = now - 24 * hour
    elif state in FINAL:
        row["processingStatus"] = 0 if state == "failure" else 1
        row["processingMessage"] = {"success": "MotionCorr 4/4", "failure": "Failed: MotionCorr",
                                    "stopped": status.STOPPED_PREFIX + ": bench"}[state]
    return row


LAYOUTS = ("own", "shared")


def folder_of(raw: Path, layout: str, name: str) -> Path:
    """Where a data collection's movies are: a folder of its own under ``raw`` (as a session's
    grids usually are), or ``raw`` itself, shared by every data collection of the visit, each
    with a template of its own (the worst case for finding one by folder and template)."""
    return raw / name if layout == "own" else raw


def fill_visit(engine, session_id: int, raw: Path, layout: str, jobs_wanted: int,
               reprocess: int) -> Filled:
    """``jobs_wanted`` relion jobs in mixed states in visit ``session_id``, with bulk multi-row
    INSERTs. Data collection ``n`` has the folder ``folder_of(raw, layout, f"fill{n:06d}")``
    and the template ``fill{n:06d}_*.mrc``. One in four data collections has two jobs (a final
    one, then a newer one); one job in ten with a program has an older failed program too; one
    in ten data collections also has another pipeline's job. The last ``reprocess`` data
    collections have final jobs only, for Starts by id. No movie is written."""
    filled = Filled()
    t0 = time.perf_counter()
    extra = jobs_wanted // 5  # data collections with a second job
    dcs = jobs_wanted - extra
    with Session(engine) as db:
        now = db.execute(select(func.now())).scalar()
        group = db.execute(insert(DataCollectionGroup).values(
            sessionId=session_id, experimentType="EM", startTime=now,
            comments="bench_store")).inserted_primary_key[0]
        _bulk(db, DataCollection, [
            {"dataCollectionGroupId": group, "SESSIONID": session_id,
             "imageDirectory": str(folder_of(raw, layout, f"fill{n:06d}")) + "/",
             "fileTemplate": f"fill{n:06d}_*.mrc", "imageSuffix": "mrc", "startTime": now}
            for n in range(dcs)])
        dc_ids = db.execute(
            select(DataCollection.fileTemplate, DataCollection.dataCollectionId)
            .where(DataCollection.SESSIONID == session_id)).all()
        by_template = dict(dc_ids)
        dc_of = [by_template[f"fill{n:06d}_*.mrc"] for n in range(dcs)]

        # (data collection index, state) per relion job, in the order written
        turn = itertools.cycle(MIXED)
        finals = itertools.cycle(FINAL)
        planned = []
        for n in range(dcs):
            if n < extra or n >= dcs - reprocess:
                planned.append((n, next(finals)))
            else:
                planned.append((n, next(turn)))
        planned += [(n, next(turn)) for n in range(extra)]
        _bulk(db, ProcessingJob, [
            {"dataCollectionId": dc_of[n], "displayName": "RELION", "recipe": status.RECIPE,
             "automatic": 0, "comments": f"bench_store {i}"} for i, (n, _) in enumerate(planned)])
        others = [{"dataCollectionId": dc_of[n], "displayName": "other", "automatic": 1,
                   "recipe": OTHER_RECIPES[n % 2], "comments": "bench_store other"}
                  for n in range(0, dcs, 10)]
        _bulk(db, ProcessingJob, others)
        pj_ids = dict(db.execute(
            select(ProcessingJob.comments, ProcessingJob.processingJobId)
            .where(ProcessingJob.dataCollectionId.in_(
                select(DataCollection.dataCollectionId)
                .where(DataCollection.SESSIONID == session_id)),
                ProcessingJob.recipe == status.RECIPE)).all())
        pjs = [pj_ids[f"bench_store {i}"] for i in range(len(planned))]
        _bulk(db, ProcessingJobParameter, [
            {"processingJobId": pj, "parameterKey": k, "parameterValue": v}
            for pj in pjs for k, v in PARAMS.items()])
        older, newer = [], []
        for i, (pj, (_, state)) in enumerate(zip(pjs, planned)):
            if state == "submitted":
                continue
            if i % 10 == 1:
                older.append(_program(pj, "failure", now - dt.timedelta(hours=2)))
            newer.append(_program(pj, state, now))
        _bulk(db, AutoProcProgram, older)  # older programs first: lower ids
        _bulk(db, AutoProcProgram, newer)
        db.commit()
        # Fresh index statistics, as a production table has them (InnoDB recomputes them in
        # the background after 10% of a table changed; the plans must not depend on when).
        db.execute(text(f"ANALYZE TABLE {', '.join(STATISTICS)}")).all()
    filled.jobs, filled.other_jobs, filled.data_collections = len(planned), len(others), dcs
    filled.states = {pj: state for pj, (_, state) in zip(pjs, planned)}
    filled.reprocess = [(dc_of[n], folder_of(raw, layout, f"fill{n:06d}") / f"fill{n:06d}_1.mrc")
                        for n in range(dcs - reprocess, dcs)]
    filled.seconds = time.perf_counter() - t0
    return filled


def remove_filled_visit(engine, session_id: int) -> float:
    """Delete the visit; the bulk rows first, by id lists (fast), then ``remove_visit``."""
    t0 = time.perf_counter()
    with Session(engine) as db:
        dcs = list(db.execute(select(DataCollection.dataCollectionId)
                              .where(DataCollection.SESSIONID == session_id)).scalars())
        pjs = []
        for start in range(0, len(dcs), CHUNK):
            pjs += db.execute(select(ProcessingJob.processingJobId).where(
                ProcessingJob.dataCollectionId.in_(dcs[start:start + CHUNK]))).scalars()
        for start in range(0, len(pjs), CHUNK):
            some = pjs[start:start + CHUNK]
            db.execute(delete(AutoProcProgram).where(AutoProcProgram.processingJobId.in_(some)))
            db.execute(delete(ProcessingJobParameter)
                       .where(ProcessingJobParameter.processingJobId.in_(some)))
        db.commit()
    with Session(engine) as db:
        remove_visit(db, session_id)
    return time.perf_counter() - t0


@contextmanager
def optional_indexes(engine, wanted: bool):
    """With ``wanted``: relion_zo/sql/optional_indexes.sql applied for the block, and its
    indexes dropped again afterwards, so the stack keeps ISPyB's own indexes."""
    if not wanted:
        yield "ISPyB's"
        return
    sql = (resources.files("relion_zo") / "sql" / OPTIONAL).read_text(encoding="utf-8")
    statements = [part.strip() for part in re.sub(r"--[^\n]*", "", sql).split(";")
                  if part.strip()]
    made = re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)\s+ON (\w+)", sql)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(f"ANALYZE TABLE {', '.join(STATISTICS)}").all()
        yield "+ optional"
    finally:
        with engine.begin() as conn:
            for index, table in made:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index} ON {table}")


# ---------------------------------------------------------------------------- measures
@contextmanager
def counting(engine):
    """Count the SQL statements sent through ``engine`` (``before_cursor_execute``)."""
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def status_of_visit(engine, visit: str) -> list[status.JobStatus]:
    """What `relion-zo status --visit` asks the database."""
    with Session(engine) as db:
        session_id = find_visit(db, visit).session_id
        return status.query_states(db, stale_seconds=STALE_SECONDS, session_id=session_id)


def _state(program: AutoProcProgram | None, now: dt.datetime) -> str:
    """docs/status.md's rules, in Python, for the per-job loop."""
    if program is None:
        return "submitted"
    if program.processingStatus == 1:
        message = program.processingMessage or ""
        return "stopped" if message.startswith(status.STOPPED_PREFIX) else "success"
    if program.processingStatus is not None:
        return "failure"
    if program.processingStartTime is None:
        return "queued"
    beat = program.processingEndTime or program.processingStartTime
    return "lost" if (now - beat).total_seconds() > STALE_SECONDS else "running"


def orm_loop(engine, visit: str) -> dict[int, str]:
    """The same answer, one query per job through the ORM (what issue 13 compares with)."""
    with Session(engine) as db:
        session_id = find_visit(db, visit).session_id
        now = db.execute(select(func.now())).scalar()
        found = db.scalars(
            select(ProcessingJob).join(DataCollection,
                                       DataCollection.dataCollectionId
                                       == ProcessingJob.dataCollectionId)
            .where(DataCollection.SESSIONID == session_id, ProcessingJob.recipe == status.RECIPE)
            .order_by(ProcessingJob.processingJobId)).all()
        states = {}
        for job in found:
            program = db.scalars(
                select(AutoProcProgram)
                .where(AutoProcProgram.processingJobId == job.processingJobId)
                .order_by(AutoProcProgram.autoProcProgramId.desc()).limit(1)).first()
            states[job.processingJobId] = _state(program, now)
        return states


@dataclass
class Row:
    layout: str
    indexes: str
    jobs: int
    fill_s: float
    status_ms: float
    status_p95_ms: float
    statements: int
    loop_s: float
    new_p50: float
    new_p95: float
    again_p50: float
    again_p95: float


@dataclass
class BenchVisit:
    name: str
    session_id: int
    raw: Path
    layout: str
    filled: Filled


def make_visit(admin, data: Path, layout: str, size: int, starts: int) -> BenchVisit:
    """A throw-away visit of ``size`` jobs, written by ``admin`` (the acquisition system's
    part); ``starts`` of its data collections are kept for Starts by id."""
    name = f"bb{uuid.uuid4().int % 10**8:08d}-1"
    with Session(admin) as db:
        session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
    raw = data / "2026" / name / "raw"
    raw.mkdir(parents=True)
    visit = BenchVisit(name, session_id, raw, layout, Filled())
    visit.filled = fill_visit(admin, session_id, raw, layout, size, reprocess=starts)
    print(f"{size} jobs, {layout} folders: filled in {visit.filled.seconds:.1f} s "
          f"({visit.filled.data_collections} data collections, {visit.filled.other_jobs} other "
          "pipelines' jobs)", flush=True)
    return visit


def measure(engine, web_engine, site, visit: BenchVisit, indexes: str, starts: int,
            repeats: int) -> Row:
    """``engine`` asks for the status (the processing side), ``web_engine`` presses Start."""
    name, raw, layout, filled = visit.name, visit.raw, visit.layout, visit.filled
    rows = status_of_visit(engine, name)  # warm the caches once
    got = {r.processing_job_id: r.state for r in rows}
    assert got == filled.states, "job_status.sql disagrees with the states written"
    times, counts = [], []
    for _ in range(repeats):
        with counting(engine) as statements:
            t0 = time.perf_counter()
            status_of_visit(engine, name)
            times.append(time.perf_counter() - t0)
        counts.append(len(statements))
    t0 = time.perf_counter()
    looped = orm_loop(engine, name)
    loop_s = time.perf_counter() - t0
    assert looped == got, "the per-job loop disagrees with job_status.sql"

    new, again = [], []
    for k in range(starts):
        folder = folder_of(raw, layout, f"start{k:04d}")
        synthetic.write_gain(folder / f"start{k:04d}_1.mrc", size=8)
        t0 = time.perf_counter()
        with Session(web_engine, expire_on_commit=False) as db:
            jobs.start_job(db, site, PARAMS, visit=name, image_directory=str(folder),
                           file_template=f"start{k:04d}_*.mrc")
        new.append(time.perf_counter() - t0)
    for dcid, movie in filled.reprocess[:starts]:
        synthetic.write_gain(movie, size=8)
        t0 = time.perf_counter()
        with Session(web_engine, expire_on_commit=False) as db:
            jobs.start_job(db, site, PARAMS, data_collection_id=dcid)
        again.append(time.perf_counter() - t0)
    return Row(layout, indexes, filled.jobs, filled.seconds, statistics.median(times) * 1000,
               p95(times) * 1000, max(counts), loop_s, statistics.median(new) * 1000,
               p95(new) * 1000, statistics.median(again) * 1000, p95(again) * 1000)


def table(rows: list[Row]) -> str:
    head = ("| folders | indexes | jobs in the visit | fill | status p50 / p95 | statements "
            "| per-job ORM loop | loop / status | Start, new dc: p50 / p95 "
            "| Start, by dcid: p50 / p95 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.layout} | {r.indexes} | {r.jobs:,} | {r.fill_s:.1f} s "
            f"| {r.status_ms:.1f} / {r.status_p95_ms:.1f} ms | {r.statements} "
            f"| {r.loop_s * 1000:,.0f} ms | {r.loop_s * 1000 / r.status_ms:.0f}× "
            f"| {r.new_p50:.1f} / {r.new_p95:.1f} ms "
            f"| {r.again_p50:.1f} / {r.again_p95:.1f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 10000, 100000],
                        help="relion jobs in each throw-away visit")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help="own: each data collection in a folder of its own; shared: every "
                        "data collection of the visit in one folder")
    parser.add_argument("--indexes", nargs="+", choices=("ispyb", "optional"),
                        default=["ispyb"], help=f"ispyb: ISPyB's own indexes; optional: with "
                        f"relion_zo/sql/{OPTIONAL} applied for the run (and dropped after it)")
    parser.add_argument("--starts", type=int, default=40,
                        help="Starts timed at each size, of each kind")
    parser.add_argument("--repeats", type=int, default=20, help="status calls timed at each size")
    args = parser.parse_args(argv)
    settings = stack.StackSettings.from_env()
    engine = make_engine(settings.credentials_path)  # the acquisition system: visits, deletes
    processing = make_engine(settings.processing_credentials_path)  # `relion-zo status`
    web = make_engine(settings.web_credentials_path)  # Start
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            site = bench_site(data, settings)
            for indexes in args.indexes:
                with optional_indexes(engine, indexes == "optional") as which:
                    for layout in args.layouts:
                        # Every size's visit is in the database while any is measured: a
                        # figure that grows with the tables, not with its visit, shows.
                        visits = []
                        try:
                            for size in args.sizes:
                                visits.append(make_visit(engine, data, layout, size,
                                                         args.starts))
                            for visit in visits:
                                rows.append(measure(processing, web, site, visit, which,
                                                    args.starts, args.repeats))
                                print(table(rows[-1:]).splitlines()[-1], flush=True)
                        finally:
                            t0 = time.perf_counter()
                            for visit in visits:
                                remove_filled_visit(engine, visit.session_id)
                            print(f"deleted in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        for each in (engine, processing, web):
            each.dispose()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
