"""Fixtures: the real local stack (MariaDB, RabbitMQ), a rolled-back session per test, a visit.

Nothing here skips: when the stack cannot start, every test that needs it errors, and CI fails.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ispyb.sqlalchemy import (
    AutoProcProgram,
    AutoProcProgramAttachment,
    AutoProcProgramMessage,
    DataCollection,
    DataCollectionGroup,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
)
from relion_zo.config import SiteConfig
from relion_zo.db import make_engine
from relion_zo.devstack import stack, synthetic
from relion_zo.devstack.demo import seed_visit

REPO = Path(__file__).resolve().parent.parent
JOB_TABLES = (
    DataCollectionGroup,
    DataCollection,
    ProcessingJob,
    ProcessingJobParameter,
    ProcessingJobImageSweep,
    AutoProcProgram,
    AutoProcProgramAttachment,
    AutoProcProgramMessage,
)
GOOD_PARAMS = {
    "angpix": "1.0",
    "voltage": "300",
    "Cs": "2.7",
    "motioncor_doseperframe": "1.0",
    # motion correction is the last stage: most tests need no CTF (test_run has one with the
    # ctffind stand-in)
    "stop_after_motion_correction": "true",
}
# This machine's share for one test's RELION, as a site's relion_it_defaults (relion_it's own
# defaults are 4 MPI processes x 6 threads for motion correction).
TEST_MACHINE = {"motioncor_mpi": 1, "motioncor_threads": 1, "ctffind_mpi": 1}
_visit_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def stack_settings() -> stack.StackSettings:
    root = Path(os.environ.get("RELION_ZO_STACK", REPO / ".stack"))
    settings = stack.StackSettings.from_env(root)
    stack.up(settings)
    return settings


@pytest.fixture(scope="session")
def engine(stack_settings):
    """The administrator: for what the acquisition system does (visits, data collections) and
    for tests that look at rows. relion_zo's own code runs as ``web_engine`` or
    ``processing_engine``, with only the grants of its side (relion_zo/sql/grants.sql)."""
    engine = make_engine(stack_settings.credentials_path)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def web_engine(stack_settings):
    engine = make_engine(stack_settings.web_credentials_path)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def processing_engine(stack_settings):
    engine = make_engine(stack_settings.processing_credentials_path)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine):
    """A session whose commits are savepoints inside a transaction rolled back after the test."""
    conn = engine.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    conn.close()


def row_counts(db) -> dict[str, int]:
    return {t.__tablename__: db.execute(select(func.count()).select_from(t)).scalar() for t in JOB_TABLES}


@pytest.fixture
def site(tmp_path, stack_settings) -> SiteConfig:
    data = tmp_path / "data"
    data.mkdir()
    return SiteConfig(
        data_roots=[data],
        visit_directory=str(data) + "/{year}/{visit}",
        heartbeat_seconds=2,
        stale_heartbeats=3,
        ispyb_credentials=stack_settings.processing_credentials_path,
        ispyb_web_credentials=stack_settings.web_credentials_path,
        relion_it_defaults=TEST_MACHINE,
        zocalo_config=stack_settings.zocalo_config_path,
    )


class VisitFixture:
    def __init__(self, name: str, session_id: int, directory: Path):
        self.name = name
        self.session_id = session_id
        self.directory = directory
        self.raw = directory / "raw"
        self.template = "*.mrc"


def new_visit_name() -> str:
    # A proposal number of its own per test run, so committed rows of other runs never clash.
    return f"zz{uuid.uuid4().int % 10**8:08d}-{next(_visit_numbers)}"


@pytest.fixture
def visit(db, site) -> VisitFixture:
    name = new_visit_name()
    start = dt.datetime(2026, 11, 1, 9, 0, 0)
    session_id = seed_visit(db, name, start=start)
    directory = site.data_roots[0] / "2026" / name
    fixture = VisitFixture(name, session_id, directory)
    synthetic.write_movies(fixture.raw, 2, size=64, frames=2)
    synthetic.write_gain(directory / "processing" / "gain.mrc", size=64)
    return fixture


@pytest.fixture
def live_visits(engine, web_engine):
    """A factory of committed visits (``runs.LiveVisit``), removed with their rows afterwards."""
    from runs import LiveVisit

    made = []

    def make(site, movies: int = 2, **movie):
        made.append(LiveVisit(engine, site, movies, web_engine=web_engine, **movie))
        return made[-1]

    yield make
    for visit in made:
        visit.remove()


@pytest.fixture
def services(tmp_path, site, stack_settings):
    """relion_zo's dispatcher and workers as processes (``runner_helpers.Services``), with the
    broker's queues empty before and after."""
    from relion_zo import broker
    from runner_helpers import Services
    from runs import write_site_file

    zocalo = stack_settings.zocalo_config_path
    broker.declare(zocalo)
    all_queues = [q for base in broker.QUEUES for q in (base, broker.dead_letter_queue(base))]
    broker.purge(zocalo, all_queues)
    running = Services(write_site_file(site, tmp_path / "site.yaml"), stack_settings, tmp_path)
    yield running
    running.stop_all()
    broker.purge(zocalo, all_queues)
