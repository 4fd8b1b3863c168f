"""The job manager: the one owner of every AutoProcProgram change (procrastinate's
``JobManager`` is the model).

Each transition is a method that opens, commits and closes its own transaction, retried with
backoff through a database outage for up to ``database_retry_seconds`` (``relion_zo.retry``).
No other module writes AutoProcProgram or decides a transition; ``relion_zo.programs`` holds
the statements, which never commit.

    claim ──> mark_running ──> beat … beat ──> finish(Outcome)
      │            │              │
      │            └── a beat or check that finds the job final, or a stop requested, tells
      │                the wrapper to end RELION
      └── request_stop: a request recorded in ISPyB (a ProcessingJobParameter row
          ``relion_zo_stop_request``) that a running wrapper sees within a second and acts on;
          on the processing side a submitted, queued or lost job is closed at once, and a
          worker closes those the web side could only ask for (``settle_stop_requests``)
    close_lost: a job whose wrapper is gone (``docs/status.md``)

A failure's reason is also written as an ERROR AutoProcProgramMessage row (what the web UIs
show), in a transaction of its own after the final status: a message that cannot be written
(the database refuses it) is logged and never undoes or hides the recorded outcome.

Why a job ended is data: ``Outcome.kind`` is one of ``OUTCOMES`` and becomes the status and the
message prefix (docs/status.md lists them), so a user's stop, a service shutdown, a wrapper
crash, a lost heartbeat and bad input are told apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ispyb.sqlalchemy import ProcessingJob
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relion_zo import programs, result_rows, status
from relion_zo.config import SiteConfig
from relion_zo.errors import InputError, NotFoundError
from relion_zo.results import JobResults
from relion_zo.retry import DatabaseUnavailable, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

# kind -> (processingStatus, message prefix). "success" has no prefix: its message is the
# progress summary. The prefixes are what docs/status.md and the SQL state rules read.
OUTCOMES: dict[str, tuple[int, str]] = {
    "success": (1, ""),
    "stopped": (1, status.STOPPED_PREFIX),
    "failed": (0, "Failed"),
    "bad_input": (0, "Bad input"),
    "shutdown": (0, "Shutdown"),
    "crashed": (0, "Wrapper crashed"),
    "lost": (0, "Lost"),
}


# A wrapper process marks its program running within seconds of being started (its Python
# start-up); one still not running after this long will never be.
NEVER_STARTED_SECONDS = 300.0


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``kind`` (a key of ``OUTCOMES``) and what happened."""

    kind: str
    detail: str
    description: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.kind!r}")

    @property
    def success(self) -> bool:
        return OUTCOMES[self.kind][0] == 1

    def text(self) -> str:
        prefix = OUTCOMES[self.kind][1]
        return f"{prefix}: {self.detail}" if prefix else self.detail


@dataclass(frozen=True)
class Check:
    """What a running wrapper must know at each beat."""

    final: bool  # someone else closed the job (a stop before it started, a reaper)
    stop_request: str | None  # "Stop requested by ..." when a stop was asked for

    @property
    def must_end(self) -> bool:
        return self.final or self.stop_request is not None


@dataclass(frozen=True)
class StopResult:
    processing_job_id: int
    action: str  # "requested", "marked" (final now), "final" (already was)
    message: str


class JobManager:
    def __init__(self, engine: Engine, config: SiteConfig, *,
                 retry_seconds: float | None = None):
        self.engine = engine
        self.config = config
        self.retry_seconds = (config.database_retry_seconds if retry_seconds is None
                              else retry_seconds)

    # ------------------------------------------------------------------ transactions
    def transaction(self, what: str, work: Callable[[Session], T]) -> T:
        """``work(db)`` in one transaction of its own, committed; retried through outages."""

        def once() -> T:
            with Session(self.engine, expire_on_commit=False) as db, db.begin():
                return work(db)

        return retrying(once, what, self.retry_seconds)

    def _locked_state(self, db: Session, pjid: int) -> status.JobStatus:
        """The job's state with its ProcessingJob row locked for this transaction, so two
        transitions of one job are decided one after the other."""
        db.execute(select(ProcessingJob.processingJobId)
                   .where(ProcessingJob.processingJobId == pjid).with_for_update())
        rows = status.query_states(db, stale_seconds=self.config.stale_seconds,
                                   processing_job_id=pjid)
        if not rows:
            raise NotFoundError(f"unknown processing job {pjid}")
        return rows[0]

    # ------------------------------------------------------------------ reads
    def state(self, pjid: int) -> status.JobStatus:
        rows = self.transaction(f"state of job {pjid}", lambda db: status.query_states(
            db, stale_seconds=self.config.stale_seconds, processing_job_id=pjid))
        if not rows:
            raise NotFoundError(f"unknown processing job {pjid}")
        return rows[0]

    def check(self, program: int) -> Check:
        def work(db: Session) -> Check:
            row = programs.program_row(db, program)
            if row is None:
                return Check(final=True, stop_request=None)
            return Check(final=row.processingStatus is not None,
                         stop_request=programs.stop_requested(db, row.processingJobId, program))

        return self.transaction(f"check of program {program}", work)

    # ------------------------------------------------------------------ transitions
    def claim(self, pjid: int, *, command_line: str, environment: str) -> int | None:
        """A new program for a job that has none (exactly once); None if it has one."""
        return self.transaction(f"claim of job {pjid}", lambda db: programs.claim(
            db, pjid, command_line=command_line, environment=environment))

    def mark_running(self, program: int, message: str, environment: str) -> bool:
        """Start time (once), first beat, where the wrapper runs. False when already final."""
        return self.transaction(f"start of program {program}", lambda db: programs.mark_running(
            db, program, message, environment=environment))

    def beat(self, program: int, message: str | None = None) -> Check:
        """Move the heartbeat (and the progress message) and say whether the run must end."""

        def work(db: Session) -> Check:
            moved = programs.heartbeat(db, program, message)
            row = programs.program_row(db, program)
            request = (programs.stop_requested(db, row.processingJobId, program)
                       if row is not None else None)
            return Check(final=not moved, stop_request=request)

        return self.transaction(f"heartbeat of program {program}", work)

    def finish(self, program: int, outcome: Outcome) -> bool:
        """The final status, once, with an ERROR row for a failure. False (and nothing
        written) when the program already had one."""

        written = self.transaction(f"final status of program {program}", lambda db:
                                   programs.finish(db, program, success=outcome.success,
                                                   message=outcome.text()))
        if written and not outcome.success:
            self.note(program, "ERROR", outcome.text(),
                      outcome.description or outcome.detail)
        return written

    def note(self, program: int, severity: str, message: str,
             description: str | None = None) -> bool:
        """An AutoProcProgramMessage row, in its own transaction. A refusal (a missing grant
        or procedure) or an outage longer than the retry limit is logged, not raised: the
        message is extra, the status already says how the job ended."""
        try:
            self.transaction(f"message of program {program}", lambda db: programs.add_message(
                db, program, severity, message, description))
            return True
        except (SQLAlchemyError, DatabaseUnavailable) as exc:
            log.warning("program %s: its %s message could not be written: %s", program,
                        severity, " ".join(str(getattr(exc, "orig", None) or exc).split()))
            return False

    def record_results(self, program: int, results: JobResults) -> dict[str, int]:
        """The job's new result rows (``relion_zo.result_rows``), in one transaction; each
        written once (natural keys), so a second call with the same results adds nothing.
        Returns how many rows of each table were added."""

        def work(db: Session) -> dict[str, int]:
            added: dict[str, int] = {}

            def count(more: dict[str, int]) -> None:
                for table, n in more.items():
                    added[table] = added.get(table, 0) + n

            count(result_rows.write_movies(db, program, results.dcid, list(results.movies),
                                           patches=results.patches, ctf_search=results.search))
            for classification, classes in results.classifications:
                count(result_rows.write_classification(
                    db, program, classification, classes_in_group=classes,
                    project=results.project))
            model = results.initial_model
            if model is not None:
                count({"CryoemInitialModel links": result_rows.write_initial_model(
                    db, program, model.resolution, model.particles, list(model.class3d_jobs),
                    results.project)})
            return added

        return self.transaction(f"results of program {program}", work)

    def attach(self, program: int, path: Path, file_type: str, rank: int) -> None:
        self.transaction(f"attachment of program {program}", lambda db: programs.attach(
            db, program, path, file_type, rank))

    def request_stop(self, pjid: int, by: str, *, close: bool = True) -> StopResult:
        """Stop a job whatever its state (SynchWeb's Stop, ``relion-zo stop``):

        - running: a stop request is recorded; its wrapper ends RELION within a second or two
          and writes ``stopped`` (and removes its own ``RUNNING_RELION_IT``);
        - submitted, queued or lost, with ``close`` (the processing side, whose role may write
          AutoProcProgram): closed as stopped at once (a submitted job gets a program first, so
          it never starts);
        - the same without ``close`` (the web side, whose role may not): the request is
          recorded; a wrapper that takes the job stops at once, and a worker closes the job
          (``settle_stop_requests``);
        - final: nothing to do.
        """

        def work(db: Session) -> StopResult:
            job = self._locked_state(db, pjid)
            if job.state in status.FINAL_STATES:
                return StopResult(pjid, "final", f"processing job {pjid} is already {job.state}")
            if close and job.state in ("submitted", "queued", "lost"):
                detail = self._close_stopped(db, job, by)
                return StopResult(pjid, "marked", f"processing job {pjid}: {detail}")
            program = job.auto_proc_program_id
            programs.request_stop(db, pjid, program, by)
            if job.state == "running":
                return StopResult(pjid, "requested",
                                  f"processing job {pjid}: stop requested; it will stop")
            return StopResult(pjid, "requested", f"processing job {pjid} is {job.state}: stop "
                              "requested; a worker closes it")

        return self.transaction(f"stop of job {pjid}", work)

    def _close_stopped(self, db: Session, job: status.JobStatus, by: str) -> str:
        """Close a submitted, queued or lost job as stopped, in the caller's transaction."""
        program = job.auto_proc_program_id
        if job.state == "submitted":
            program = programs.claim(db, job.processing_job_id,
                                     command_line=f"relion-zo stop ({by})",
                                     environment="stopped before it started")
        detail = ("the job had stopped responding" if job.state == "lost"
                  else "stopped before it started")
        programs.finish(db, program, success=True,
                        message=Outcome("stopped", f"{detail} ({by})").text())
        return detail

    def settle_stop_requests(self) -> list[int]:
        """Close, as stopped, the submitted, queued and lost jobs that the web side asked to
        stop (running ones stop themselves). Their ids."""

        def work(db: Session) -> list[int]:
            closed = []
            for pjid in programs.open_stop_requests(db):
                job = self._locked_state(db, pjid)
                if job.state not in ("submitted", "queued", "lost"):
                    continue
                request = programs.stop_requested(db, pjid, job.auto_proc_program_id)
                if request is not None:
                    self._close_stopped(db, job, request.removeprefix(
                        programs.STOP_REQUEST + " ").removeprefix("by "))
                    closed.append(pjid)
            return closed

        return self.transaction("closing jobs asked to stop", work)

    def close_lost(self, job: status.JobStatus, by: str) -> bool:
        """Failure for a job whose wrapper is gone; only while it is still lost (a run that
        just beat again is left alone)."""
        since = f"{job.heartbeat:%Y-%m-%d %H:%M:%S}" if job.heartbeat else "its start"
        outcome = Outcome("lost", f"no heartbeat since {since} ({by})")
        closed = self.transaction(f"closing lost job {job.processing_job_id}", lambda db:
                                  programs.finish_lost(db, job.auto_proc_program_id,
                                                       self.config.stale_seconds,
                                                       outcome.text()))
        if closed:
            self.note(job.auto_proc_program_id, "ERROR", outcome.text())
        return closed

    def close_never_started(self, skip: set[int] = frozenset()) -> list[int]:
        """Programs claimed more than ``NEVER_STARTED_SECONDS`` (or the stale limit, if
        longer) ago that never started, except those in ``skip`` (wrappers known to be
        starting): closed as ``Wrapper crashed`` (their claimer died before it started a
        wrapper). Their ids."""
        limit = max(NEVER_STARTED_SECONDS, self.config.stale_seconds)

        def work(db: Session) -> list[int]:
            closed = []
            for program in programs.stuck_queued(db, limit):
                if program in skip:
                    continue
                outcome = Outcome("crashed", "claimed but never started (the process that "
                                  "claimed it died)")
                if programs.finish(db, program, success=False, message=outcome.text()):
                    closed.append(program)
            return closed

        closed = self.transaction("closing programs that never started", work)
        for program in closed:
            self.note(program, "ERROR", Outcome("crashed", "claimed but never started").text())
        return closed

    def unsent_jobs(self) -> list[tuple[int, float]]:
        """(job id, age) of relion jobs still ``submitted`` after ``resend_after_seconds``."""
        return self.transaction("submitted jobs", lambda db: programs.stuck_submitted(
            db, self.config.resend_after_seconds, status.RECIPE))

    def fail_never_picked_up(self, pjid: int, age: float) -> bool:
        """A job submitted ``age`` seconds ago that no worker ever took: closed as a failure
        so that it stops blocking its data collection."""

        def work(db: Session) -> tuple[int, str] | None:
            self._locked_state(db, pjid)
            program = programs.claim(db, pjid, command_line="relion_zo (never picked up)",
                                     environment="")
            if program is None:
                return None
            text = Outcome("failed", f"never picked up by a worker in {age / 3600:.1f} h; "
                           "start it again").text()
            programs.finish(db, program, success=False, message=text)
            return program, text

        failed = self.transaction(f"failing unsent job {pjid}", work)
        if failed is None:
            return False
        self.note(failed[0], "ERROR", failed[1])
        return True

    def lost_jobs(self, session_id: int | None = None) -> list[status.JobStatus]:
        return self.transaction("lost jobs", lambda db: status.lost_jobs(
            db, stale_seconds=self.config.stale_seconds, session_id=session_id))

    def new_program(self, pjid: int, *, command_line: str, environment: str) -> int:
        """A fresh program for a job whose newest one is final (``relion-zo resume``)."""

        def work(db: Session) -> int:
            job = self._locked_state(db, pjid)
            if job.state not in ("failure", "stopped", "lost"):
                raise InputError(f"processing job {pjid} is {job.state}; only a failed, "
                                 "stopped or lost job can be resumed")
            if job.state == "lost":
                programs.finish_lost(db, job.auto_proc_program_id, 0,
                                     Outcome("lost", "closed to resume it").text())
            return programs.register(db, pjid, command_line=command_line,
                                     environment=environment)

        return self.transaction(f"resume of job {pjid}", work)
