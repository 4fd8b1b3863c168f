"""What the web UIs' Stop and "Stop and restart", a scientist's reprocess and resume, and
reaping do to jobs, as plain functions over the job manager (or a session, for reads) and the
site configuration.

Sending messages is not done here: callers pass what to send (or send it themselves), so the
same functions serve the broker path, ``--local`` and the worker that receives a stop. Every
state change itself is ``relion_zo.manager.JobManager``'s.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ispyb.sqlalchemy import ProcessingJob
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relion_zo import jobs, programs, project, slurm, status
from relion_zo.config import SiteConfig
from relion_zo.errors import InputError, NotFoundError, RelionZoError
from relion_zo.manager import JobManager
from relion_zo.relion_it.driver import end_relion_in, process_start

log = logging.getLogger(__name__)


def job_state(db: Session, config: SiteConfig, pjid: int) -> status.JobStatus:
    rows = status.query_states(db, stale_seconds=config.stale_seconds, processing_job_id=pjid)
    if not rows:
        raise NotFoundError(f"unknown processing job {pjid}")
    return rows[0]


def project_of(manager: JobManager, pjid: int) -> Path:
    spec = manager.transaction(f"loading job {pjid}", lambda db: jobs.load_job(
        db, manager.config, pjid))
    return project.project_directory(manager.config, spec.visit_directory, pjid)


def end_relion(manager: JobManager, pjid: int) -> int:
    """End every process left in a job's project, its jobs in the cluster's queue and its
    RUNNING files; how many process groups."""
    try:
        folder = project_of(manager, pjid)
    except RelionZoError as exc:  # rows that no longer load: nothing to clean
        log.warning("job %s: no project to clean up: %s", pjid, exc)
        return 0
    if folder.is_dir():
        slurm.cancel_project(folder, manager.config.queue)
    ended = end_relion_in(folder) if folder.is_dir() else 0
    if ended:
        log.warning("job %s: ended RELION processes left in %s", pjid, folder)
    return ended


def wrapper_alive(environment: str | None, pjid: int) -> bool | None:
    """Whether the wrapper recorded in ``processingEnvironment`` (``host=H pid=P ...``) still
    runs: True/False when it ran on this host, None when it ran elsewhere (or is unknown)."""
    fields = dict(part.split("=", 1) for part in (environment or "").split() if "=" in part)
    if fields.get("host") != socket.gethostname() or not fields.get("pid", "").isdigit():
        return None
    if fields.get("started", "?") != "?":  # a warm wrapper's argv is its fork server's
        return process_start(int(fields["pid"])) == fields["started"]
    try:
        with open(f"/proc/{fields['pid']}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    joined = b" ".join(argv)
    ours = b"relion_zo.child" in joined or b"relion-zo" in joined
    return ours and str(pjid).encode() in argv


def reap(
    manager: JobManager, *, session_id: int | None = None, include_remote: bool = True,
    skip: Iterable[int] = (), by: str = "reaped",
) -> list[int]:
    """Close lost jobs whose wrapper is gone; returns their ids. A wrapper on this host is
    gone when its process is; one on another host when its heartbeat is stale and
    ``include_remote`` (a worker says so only once it has itself reached the database for a
    stale period: its own outage is not the wrapper's death). Should a live remote wrapper be
    closed all the same, it finds its job final at its next check and ends RELION. What it
    cannot close it logs and goes on past."""
    closed = []
    skipped = set(skip)
    for job in manager.lost_jobs(session_id):
        if job.processing_job_id in skipped:
            continue
        try:
            environment = manager.transaction("wrapper of a lost job", lambda db: (
                programs.program_row(db, job.auto_proc_program_id).processingEnvironment))
            alive = wrapper_alive(environment, job.processing_job_id)
            if alive or (alive is None and not include_remote):
                continue
            if alive is False:
                end_relion(manager, job.processing_job_id)
            if manager.close_lost(job, by):
                closed.append(job.processing_job_id)
                log.warning("job %s: lost (its wrapper is gone), closed", job.processing_job_id)
        except (RelionZoError, SQLAlchemyError) as exc:  # a refusal: the next job all the same
            log.error("job %s: could not close it: %s", job.processing_job_id,
                      " ".join(str(getattr(exc, "orig", None) or exc).split()))
    return closed


@dataclass
class Rescued:
    never_started: list[int]  # programs closed as "claimed but never started"
    resent: list[int]  # jobs whose message was sent again
    failed: list[int]  # jobs never picked up within submitted_limit_seconds
    stopped: list[int]  # jobs the web side asked to stop before they ran, now closed


def rescue(
    manager: JobManager, send: Callable[[int], None] | None = None,
    last_sent: dict[int, float] | None = None, clock: Callable[[], float] = time.monotonic,
    starting: set[int] = frozenset(),
) -> Rescued:
    """Nothing stays ``submitted`` or ``queued`` forever: a job asked to stop is closed as
    stopped (``JobManager.settle_stop_requests``); a program claimed but never started
    for ``manager.NEVER_STARTED_SECONDS`` is closed (not those in ``starting``); a job ``submitted`` for longer than
    ``resend_after_seconds`` has its message sent again (when ``send`` is given; at most once
    per that period, ``last_sent`` remembers when), and one ``submitted`` for longer than
    ``submitted_limit_seconds`` is closed as a failure."""
    config = manager.config
    result = Rescued(manager.close_never_started(starting), [], [],
                     manager.settle_stop_requests())
    last_sent = {} if last_sent is None else last_sent
    for pjid, age in manager.unsent_jobs():
        if age > config.submitted_limit_seconds:
            if manager.fail_never_picked_up(pjid, age):
                result.failed.append(pjid)
        elif send is not None and clock() - last_sent.get(pjid, -1e18) >= (
                config.resend_after_seconds):
            send(pjid)
            last_sent[pjid] = clock()
            result.resent.append(pjid)
    for pjid in result.resent:
        log.warning("job %s was still submitted after %.0f s: its message was sent again",
                    pjid, config.resend_after_seconds)
    return result


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
