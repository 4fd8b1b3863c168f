"""Helpers for tests that run RELION: committed rows (the wrapper opens its own sessions, so
these tests cannot live in a rolled-back transaction), site files, process checks."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from conftest import GOOD_PARAMS, TEST_MACHINE, new_visit_name
from ispyb.sqlalchemy import AutoProcProgram, AutoProcProgramAttachment, AutoProcProgramMessage
from relion_zo import jobs, status
from relion_zo.config import SiteConfig
from relion_zo.devstack import synthetic
from relion_zo.devstack.demo import remove_visit, seed_visit
from relion_zo.relion_it.driver import processes_in  # noqa: F401 - tests import it from here
from relion_zo.runner import RunOutcome, StopRequest, run_job

MOVIE = {"size": 128, "frames": 4}


class LiveVisit:
    """A visit whose rows are committed, with a raw folder of tiny movies and a gain file.
    Make them through the ``live_visits`` fixture, which removes their rows afterwards."""

    def __init__(self, engine, site: SiteConfig, movies: int = 2, *, web_engine=None, **movie):
        self.engine = engine  # the administrator: the visit's rows, as acquisition writes them
        self.web_engine = web_engine or engine  # Start
        self.site = site
        self.name = new_visit_name()
        with Session(engine) as db:
            self.session_id = seed_visit(db, self.name, start=dt.datetime(2026, 11, 1, 9))
        self.directory = site.data_roots[0] / "2026" / self.name
        self.raw = self.directory / "raw"
        self.movie = {**MOVIE, **movie}
        self.add_movies(movies)
        self.gain = synthetic.write_gain(self.directory / "processing" / "gain.mrc",
                                         size=self.movie["size"])

    def add_movies(self, count: int, start: int | None = None) -> None:
        first = start or len(list(self.raw.glob("*.mrc"))) + 1
        synthetic.write_movies(self.raw, count, start=first, **self.movie)

    def start(self, **params) -> int:
        with Session(self.web_engine) as db:
            return jobs.start_job(
                db, self.site, {**GOOD_PARAMS, **params}, visit=self.name,
                image_directory=str(self.raw), file_template="*.mrc",
            ).processing_job_id

    def remove(self) -> None:
        with Session(self.engine) as db:
            remove_visit(db, self.session_id)

    def project(self, pjid: int) -> Path:
        return self.directory / "processed" / f"relion_{pjid}"


def site_config(tmp_path: Path, stack_settings, **overrides) -> SiteConfig:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    values = dict(
        data_roots=[data],
        visit_directory=str(data) + "/{year}/{visit}",
        heartbeat_seconds=1,
        stale_heartbeats=5,
        idle_seconds=0,
        ispyb_credentials=stack_settings.processing_credentials_path,
        ispyb_web_credentials=stack_settings.web_credentials_path,
        relion_it_defaults=TEST_MACHINE,
        zocalo_config=stack_settings.zocalo_config_path,
    )
    values.update(overrides)
    return SiteConfig(**values)


def write_site_file(site: SiteConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(site.model_dump(mode="json")))
    return path


def job_status(engine, site: SiteConfig, pjid: int) -> status.JobStatus:
    with Session(engine) as db:
        (row,) = status.query_states(db, stale_seconds=site.stale_seconds, processing_job_id=pjid)
    return row


def program_rows(engine, pjid: int):
    with Session(engine) as db:
        return db.execute(
            select(AutoProcProgram).where(AutoProcProgram.processingJobId == pjid)
        ).scalars().all()


def wrapper_pid(engine, pjid: int) -> int:
    """The pid of the job's running wrapper, as it recorded itself (``processingEnvironment``:
    a warm wrapper's command line is its fork server's)."""
    (row,) = [r for r in program_rows(engine, pjid) if r.processingStatus is None]
    fields = dict(part.split("=", 1) for part in row.processingEnvironment.split() if "=" in part)
    return int(fields["pid"])


def attachments(engine, app: int) -> dict[str, str]:
    with Session(engine) as db:
        rows = db.execute(select(AutoProcProgramAttachment).where(
            AutoProcProgramAttachment.autoProcProgramId == app)).scalars().all()
    return {r.fileName: r.fileType for r in rows}


def error_messages(engine, app: int) -> list[str]:
    with Session(engine) as db:
        return list(db.execute(select(AutoProcProgramMessage.message).where(
            AutoProcProgramMessage.autoProcProgramId == app,
            AutoProcProgramMessage.severity == "ERROR")).scalars())


class Background:
    """``run_job`` in a thread, so a test can act while RELION runs."""

    def __init__(self, pjid: int, **kwargs):
        self.stop = StopRequest()
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(pjid,), kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, pjid, **kwargs):
        try:
            self.outcome = run_job(pjid, stop=self.stop, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float) -> RunOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run_job still running after {timeout} s"
        if self.error:
            raise self.error
        return self.outcome
