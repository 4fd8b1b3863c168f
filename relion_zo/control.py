"""What SynchWeb's Stop and "Stop and restart" buttons and a scientist's reprocess do to jobs,
as plain functions over a database session and the site configuration.

Sending messages is not done here: callers pass what to send (or send it themselves), so the
same functions serve the broker path, ``--local`` and the worker that receives a stop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ispyb.sqlalchemy import ProcessingJob
from relion_zo import jobs, programs, project, status
from relion_zo.config import SiteConfig
from relion_zo.errors import InputError, NotFoundError
from relion_zo.relion_it.pipeliner import RUNNING_RELION_IT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopResult:
    processing_job_id: int
    action: str  # "removed", "marked", "pending", "final"
    message: str

    @property
    def settled(self) -> bool:
        """True when nothing more needs doing for this stop."""
        return self.action != "pending"


def job_state(db: Session, config: SiteConfig, pjid: int) -> status.JobStatus:
    rows = status.query_states(db, stale_seconds=config.stale_seconds, processing_job_id=pjid)
    if not rows:
        raise NotFoundError(f"unknown processing job {pjid}")
    return rows[0]


def running_file(db: Session, config: SiteConfig, pjid: int) -> Path:
    spec = jobs.load_job(db, config, pjid)
    return project.project_directory(config, spec.visit_directory, pjid) / RUNNING_RELION_IT


def stop_job(db: Session, config: SiteConfig, pjid: int) -> StopResult:
    """Stop a job whatever its state.

    - submitted: a program is claimed and closed as stopped, so no wrapper ever starts it;
    - queued: its program is closed as stopped; the wrapper that picks it up finds it final;
    - running: its ``RUNNING_RELION_IT`` is removed; the wrapper ends RELION and writes
      ``stopped``. While the wrapper is still setting up there is no file yet: ``pending``,
      the caller tries again;
    - lost: closed as stopped (nothing is running any more);
    - final: nothing to do.
    """
    for _ in range(3):  # a claim that loses a race to a worker looks again
        state = job_state(db, config, pjid)
        db.rollback()
        if state.state in status.FINAL_STATES:
            return StopResult(pjid, "final", f"processing job {pjid} is already {state.state}")
        if state.state == "submitted":
            program = programs.claim(db, pjid, command_line="relion-zo stop",
                                     environment="stopped before it started")
            if program is None:
                continue
            programs.finish_stopped(db, program, "stopped before it started")
            return StopResult(pjid, "marked", f"processing job {pjid} will not start")
        if state.state in ("queued", "lost"):
            detail = "stopped before it started" if state.state == "queued" else (
                "the job had stopped responding")
            if programs.finish_stopped(db, state.auto_proc_program_id, detail):
                return StopResult(pjid, "marked", f"processing job {pjid}: {detail}")
            continue
        path = running_file(db, config, pjid)
        try:
            path.unlink()
        except FileNotFoundError:
            return StopResult(pjid, "pending",
                              f"processing job {pjid} is setting up; {path} is not there yet")
        return StopResult(pjid, "removed", f"processing job {pjid}: removed {path}; it will stop")
    return StopResult(pjid, "pending", f"processing job {pjid} changed state while stopping")


def close_lost(db: Session, config: SiteConfig, job: status.JobStatus, by: str) -> bool:
    """Record a failure for a lost job (see ``programs.finish_lost``); ``by`` says who."""
    text = f"lost: no heartbeat since {job.heartbeat:%Y-%m-%d %H:%M:%S} ({by})"
    return programs.finish_lost(db, job.auto_proc_program_id, config.stale_seconds, text)


def reap(db: Session, config: SiteConfig, session_id: int | None = None) -> list[int]:
    """Close every lost job (of one visit, or all); returns their ids."""
    lost = status.lost_jobs(db, stale_seconds=config.stale_seconds, session_id=session_id)
    db.rollback()
    return [job.processing_job_id for job in lost if close_lost(db, config, job, "reaped")]


def active_job_of(db: Session, config: SiteConfig, dcid: int) -> status.JobStatus | None:
    jobs.data_collection_exists(db, dcid)
    active = status.active_jobs(db, dcid, stale_seconds=config.stale_seconds)
    return active[-1] if active else None


def newest_job_of(db: Session, config: SiteConfig, dcid: int) -> status.JobStatus:
    jobs.data_collection_exists(db, dcid)
    rows = status.query_states(db, stale_seconds=config.stale_seconds, data_collection_id=dcid)
    if not rows:
        raise NotFoundError(f"data collection {dcid} has no relion processing job")
    return rows[-1]


def stored_parameters(db: Session, pjid: int) -> tuple[int, list[tuple[str, str]]]:
    """The data collection and the parameter rows of an existing job."""
    dcid = db.execute(
        select(ProcessingJob.dataCollectionId).where(
            ProcessingJob.processingJobId == pjid, ProcessingJob.recipe == status.RECIPE
        )
    ).scalar()
    if dcid is None:
        raise NotFoundError(f"unknown processing job {pjid}")
    return dcid, jobs.stored_items(db, pjid)


def merge(stored: list[tuple[str, str]], overrides: Iterable[tuple[str, str]]) -> list:
    """Stored parameters with ``overrides`` replacing keys of the same name."""
    overrides = list(overrides)
    keys = [k for k, _ in overrides]
    if len(keys) != len(set(keys)):
        raise InputError(f"parameter given twice in overrides: {sorted(keys)}")
    replaced = set(keys)
    return [(k, v) for k, v in stored if k not in replaced] + overrides


def reprocess(
    db: Session, config: SiteConfig, pjid: int, overrides: Iterable[tuple[str, str]] = ()
) -> jobs.StartResult:
    """A new job for the same data collection with the old parameters plus ``overrides``,
    checked like any Start (and refused the same way while the data collection is busy)."""
    dcid, stored = stored_parameters(db, pjid)
    db.rollback()
    return jobs.start_job(
        db, config, merge(stored, overrides), data_collection_id=dcid,
        comments=f"reprocessing of job {pjid}",
    )


def wait_until_final(
    db: Session, config: SiteConfig, pjid: int, timeout: float, poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> status.JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(db, config, pjid)
        db.rollback()
        if state.state in status.FINAL_STATES:
            return state
        if time.monotonic() > deadline:
            raise InputError(
                f"processing job {pjid} is still {state.state} after {timeout:.0f} s"
            )
        sleep(poll)


def _ascii_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


class Ledger:
    """A bulk reprocess's record, beside the id file: ``old_id new_id`` per line, appended and
    flushed as each id is done, so a second run skips what the first did. It is opened for
    appending before any job is written, so an unwritable ledger is an error before anything
    else happens."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[int, int] = {}
        try:
            self.handle = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the ledger {path}: {exc.strerror}") from None
        try:
            text = _read_text(path)
        except InputError:
            self.handle.close()
            raise
        if text and not text.endswith("\n"):  # a line cut short by a crash: close it
            self.handle.write("\n")
            self.handle.flush()
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and all(_ascii_number(p) for p in parts):
                self.done[int(parts[0])] = int(parts[1])

    def record(self, old: int, new: int) -> None:
        try:
            self.handle.write(f"{old} {new}\n")
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as exc:
            raise InputError(f"job {new} was written but the ledger {self.path} could not "
                             f"record it: {exc.strerror}") from None
        self.done[old] = new

    def close(self) -> None:
        self.handle.close()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def read_job_ids(path: Path) -> list[int]:
    """Job ids, one per line; blank lines and ``#`` comments are skipped."""
    ids = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not _ascii_number(text) or len(text) > 18:
            raise InputError(f"{path} line {number}: {text[:40]!r} is not a job id")
        ids.append(int(text))
    return ids
