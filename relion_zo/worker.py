"""``relion-zo worker``: consume run and stop messages, run each job in a child process.

The logic lives in ``Supervisor``, a plain class whose side effects come in as arguments
(database engine, site file, how to start a child, how to acknowledge or reject a delivery),
so tests drive it without a broker. ``RelionWorker`` is the thin ``workflows`` service that
connects it to RabbitMQ; zocalo starts it as ``zocalo.service -s RelionWorker``.

Delivery rules (one delivery = one message on ``relion`` or ``relion.stop``):

- a run for a ``submitted`` job: claim its AutoProcProgram (committed), start the child, and
  hold the delivery until the child has ended and the job has a final status; then ack. The
  prefetch count is therefore the number of jobs a worker runs at once;
- a run for a job that already has a program (a double click, or a redelivery after a worker
  died): nothing is started again. The delivery is held until the job is final — or lost,
  which the worker then finalises as a failure — and acked;
- a child that ends without writing a final status gets one from the supervisor (failure);
- a malformed or unknown job id is rejected without requeue: it goes to the dead-letter queue
  with the reason in the log;
- a stop follows ``control.stop_job``; a job still setting up is tried again each poll until it
  has its RUNNING file or is final.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
import workflows.recipe
from sqlalchemy.orm import Session
from workflows.services.common_service import CommonService

from relion_zo import control, programs, status
from relion_zo.broker import RUN_QUEUE, STOP_QUEUE
from relion_zo.config import SiteConfig, load_config
from relion_zo.db import make_engine
from relion_zo.dispatch import step_job_id
from relion_zo.errors import NotFoundError, RelionZoError
from relion_zo.relion_it.driver import end_relion_in
from relion_zo.runner import environment_text

log = logging.getLogger(__name__)

STOP_RETRY_SECONDS = 60.0


@dataclass
class Held:
    """A delivery the worker has not acknowledged yet."""

    token: Any
    kind: str  # "run", "watch" or "stop"
    pjid: int
    program: int | None = None
    child: Any = None
    since: float = field(default_factory=time.monotonic)


def spawn_child(pjid: int, program: int) -> subprocess.Popen:
    """The wrapper process for one run (see ``relion_zo.child``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "relion_zo.child", str(pjid), str(program), str(os.getpid())],
        stdin=subprocess.DEVNULL,
    )


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        config: SiteConfig,
        *,
        ack: Callable[[Any], None],
        reject: Callable[[Any], None],
        spawn: Callable[[int, int], Any] = spawn_child,
    ):
        self.engine = engine
        self.config = config
        self.ack = ack
        self.reject = reject
        self.spawn = spawn
        self.held: list[Held] = []

    # ---------------------------------------------------------------- deliveries
    def on_run(self, token: Any, step: dict | None, message: Any = None) -> None:
        pjid = self._job_id(token, step, message, "run")
        if pjid is None:
            return
        with Session(self.engine) as db:
            try:
                state = control.job_state(db, self.config, pjid)
            except NotFoundError as exc:
                return self._refuse(token, str(exc))
            db.rollback()
            if state.state == "submitted":
                program = programs.claim(
                    db, pjid, command_line=f"relion-zo worker (ispyb_process {pjid})",
                    environment=environment_text(),
                )
                if program is not None:
                    log.info("job %s: program %s claimed, starting the wrapper", pjid, program)
                    child = self.spawn(pjid, program)
                    self.held.append(Held(token, "run", pjid, program, child))
                    return
            log.info("job %s is already %s; not starting it again", pjid, state.state)
            self.held.append(Held(token, "watch", pjid, state.auto_proc_program_id))
        self.poll()

    def on_stop(self, token: Any, step: dict | None, message: Any = None) -> None:
        pjid = self._job_id(token, step, message, "stop")
        if pjid is None:
            return
        self.held.append(Held(token, "stop", pjid))
        self.poll()

    def _job_id(self, token: Any, step, message, what: str) -> int | None:
        try:
            return step_job_id(step, message)
        except ValueError as exc:
            self._refuse(token, f"{what} message rejected: {exc}")
            return None

    def _refuse(self, token: Any, reason: str) -> None:
        log.error("%s; sent to the dead-letter queue", reason)
        self.reject(token)

    # ---------------------------------------------------------------- the loop
    def poll(self) -> None:
        """Settle what can be settled; called between messages and on a timer."""
        for held in list(self.held):
            try:
                settled = getattr(self, f"_poll_{held.kind}")(held)
            except Exception:  # noqa: BLE001 - a database hiccup: try again next poll
                log.exception("job %s: checking its %s failed", held.pjid, held.kind)
                continue
            if settled:
                self.held.remove(held)
                self.ack(held.token)

    def _poll_run(self, held: Held) -> bool:
        code = held.child.poll()
        if code is None:
            return False
        with Session(self.engine) as db:
            if programs.is_final(db, held.program):
                log.info("job %s: wrapper ended (%s)", held.pjid, code)
                return True
            # First end what the dead wrapper left running, so that once the status says
            # failure nothing of the job runs any more.
            try:
                project = control.running_file(db, self.config, held.pjid).parent
            except RelionZoError as exc:  # e.g. rows that no longer load: nothing to clean
                log.warning("job %s: no project to clean up: %s", held.pjid, exc)
                project = None
            if project is not None and project.is_dir() and end_relion_in(project):
                log.warning("job %s: ended RELION processes left in %s", held.pjid, project)
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            message = f"the wrapper process ended ({how}) without a final status"
            if programs.finish(db, held.program, success=False, message=message):
                programs.add_message(db, held.program, "ERROR", message)
                log.error("job %s: %s; recorded a failure", held.pjid, message)
        log.info("job %s: wrapper ended (%s)", held.pjid, code)
        return True

    def _poll_watch(self, held: Held) -> bool:
        with Session(self.engine) as db:
            state = control.job_state(db, self.config, held.pjid)
            db.rollback()
            if state.state in status.FINAL_STATES:
                return True
            if state.state == "lost":
                control.close_lost(db, self.config, state, "finalised by a worker")
                return False  # settled on the next poll, once the status reads final
            if state.state == "queued" and time.monotonic() - held.since > self.config.stale_seconds:
                programs.finish(db, state.auto_proc_program_id, success=False,
                                message="queued but never started (its worker died?)")
            return False

    def _poll_stop(self, held: Held) -> bool:
        with Session(self.engine) as db:
            result = control.stop_job(db, self.config, held.pjid)
        log.info(result.message)
        if not result.settled and time.monotonic() - held.since > STOP_RETRY_SECONDS:
            log.warning("job %s: gave up stopping after %.0f s", held.pjid, STOP_RETRY_SECONDS)
            return True
        return result.settled


# ---------------------------------------------------------------------------- the service

class RelionWorker(CommonService):
    """relion_zo's worker as a ``workflows`` service (``zocalo.service -s RelionWorker``)."""

    _service_name = "relion_zo worker"
    _logger_name = "relion_zo.worker"

    def initializing(self):
        config = load_config()
        self.supervisor = Supervisor(
            make_engine(config.credentials_path()), config,
            ack=lambda header: self._transport.ack(header),
            reject=lambda header: self._transport.nack(header, requeue=False),
        )
        workflows.recipe.wrap_subscribe(
            self._transport, RUN_QUEUE, self.on_run, acknowledgement=True,
            allow_non_recipe_messages=True, prefetch_count=config.worker_jobs,
        )
        workflows.recipe.wrap_subscribe(
            self._transport, STOP_QUEUE, self.on_stop, acknowledgement=True,
            allow_non_recipe_messages=True, prefetch_count=10,
        )
        self._register_idle(0.2, self.supervisor.poll)
        log.info("worker %s ready: up to %d jobs at once", os.getpid(), config.worker_jobs)

    def on_run(self, rw, header, message):
        self.supervisor.on_run(header, _step(rw), message)

    def on_stop(self, rw, header, message):
        self.supervisor.on_stop(header, _step(rw), message)


def _step(rw) -> dict | None:
    return rw.recipe_step if rw is not None else None
