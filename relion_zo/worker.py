"""``relion-zo worker``: consume run and stop messages, run each job in a child process.

The logic lives in ``Supervisor``, a plain class whose side effects come in as arguments
(database engine, site file, how to start a child, how to acknowledge or reject a delivery),
so tests drive it without a broker. ``RelionWorker`` is the thin ``workflows`` service that
connects it to RabbitMQ; zocalo starts it as ``zocalo.service -s RelionWorker -t
RelionPikaTransport`` (what ``relion-zo worker`` runs).

Delivery rules (one delivery = one message on ``relion`` or ``relion.stop``):

- a run for a ``submitted`` job: claim its AutoProcProgram (committed), start the child, and
  hold the delivery until the child has ended and the job has a final status; then ack. The
  prefetch count is therefore the number of jobs a worker runs at once;
- a run for a job that already has a program (a double click, or a redelivery after a worker
  died): nothing is started again. The delivery is held until the job is final — or lost,
  which the worker then finalises as a failure — and acked;
- a child that ends without writing a final status gets one from the supervisor (failure);
- a delivery the worker cannot use is rejected without requeue at once, so it goes to the
  queue's dead-letter queue, with the reason as one log line: a body that is not JSON, a
  ``workflows-recipe`` header with no or a broken recipe, no or a malformed ``ispyb_process``,
  a job ISPyB does not know (for a run and for a stop alike). Any other exception while a
  delivery is handled is caught the same way (a delivery already held is left to the poll);
- a stop follows ``control.stop_job``; a job still setting up is tried again each poll until it
  has its RUNNING file or is final (at most ``STOP_RETRY_SECONDS``).

The service subscribes without workflows' recipe unwrapping (``read_delivery`` does it, and
refuses what it cannot read) and runs on ``relion_zo.transport.RelionPikaTransport``, which
survives messages without headers.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import workflows.recipe
from sqlalchemy import Engine
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
from relion_zo.transport import (
    TRANSPORT_NAME,
    RelionPikaTransport,
    Unusable,
    decode_body,
    describe,
    is_recipe_message,
    json_kind,
)

log = logging.getLogger(__name__)

STOP_RETRY_SECONDS = 60.0
STOP_PREFETCH = 10


@dataclass
class Held:
    """A delivery the worker has not acknowledged yet."""

    token: Any
    kind: str  # "run", "watch" or "stop"
    pjid: int
    program: int | None = None
    child: Any = None
    since: float = field(default_factory=time.monotonic)
    last_error: str | None = None


def spawn_child(pjid: int, program: int) -> subprocess.Popen:
    """The wrapper process for one run (see ``relion_zo.child``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "relion_zo.child", str(pjid), str(program), str(os.getpid())],
        stdin=subprocess.DEVNULL,
    )


def read_delivery(header: Mapping[str, Any], body: bytes | str) -> tuple[dict | None, Any]:
    """A delivery as (recipe step, payload): the step is ``None`` for a plain message (its
    whole body is the payload). ``Unusable`` when the body is not JSON or the headers say
    recipe and there is no usable one."""
    message = decode_body(body)
    if not is_recipe_message(header):
        return None, message
    if not isinstance(message, dict):
        raise Unusable(f"a recipe message must be a JSON object, not a JSON {json_kind(message)}")
    if "recipe" not in message:
        raise Unusable("the message has a workflows-recipe header but no recipe")
    try:
        step = workflows.recipe.RecipeWrapper(message=message).recipe_step
    except Exception as exc:  # noqa: BLE001 - whatever a broken recipe raises
        raise Unusable(f"the recipe is broken ({describe(exc)})") from None
    if not isinstance(step, dict):
        raise Unusable(f"the recipe step is a JSON {json_kind(step)}, not an object")
    return step, message.get("payload")


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
        # Explicit registries: what a delivery of each kind does, how each held one is polled.
        self._handlers = {"run": self.on_run, "stop": self.on_stop}
        self._pollers = {"run": self._poll_run, "watch": self._poll_watch,
                         "stop": self._poll_stop}

    # ---------------------------------------------------------------- deliveries
    def deliver(self, kind: str, token: Any, header: Mapping[str, Any], body: Any) -> None:
        """One delivery on the run (``kind`` "run") or stop queue; never raises. What cannot
        be used is rejected at once, with the reason in the log as one line."""
        try:
            step, message = read_delivery(header, body)
            self._handlers[kind](token, step, message)
        except Exception as exc:  # noqa: BLE001 - no delivery may end the worker
            if self._holds(token):
                log.error("%s message: %s (the delivery stays held)", kind, describe(exc))
            else:
                self._refuse(token, f"{kind} message rejected: {describe(exc)}")
        self.poll()

    def on_run(self, token: Any, step: dict | None, message: Any = None) -> None:
        pjid = self._job_id(token, step, message, "run")
        if pjid is None:
            return
        with Session(self.engine) as db:
            try:
                state = control.job_state(db, self.config, pjid)
            except NotFoundError as exc:
                return self._refuse(token, f"run message rejected: {exc}")
            db.rollback()
            if state.state == "submitted":
                program = programs.claim(
                    db, pjid, command_line=f"relion-zo worker (ispyb_process {pjid})",
                    environment=environment_text(),
                )
                if program is not None:
                    log.info("job %s: program %s claimed, starting the wrapper", pjid, program)
                    child = self._start(db, pjid, program)
                    self.held.append(Held(token, "run", pjid, program, child))
                    return
            log.info("job %s is already %s; not starting it again", pjid, state.state)
            self.held.append(Held(token, "watch", pjid, state.auto_proc_program_id))

    def _start(self, db: Session, pjid: int, program: int) -> Any:
        """The child for a claimed program; if it cannot start, the program records why."""
        try:
            return self.spawn(pjid, program)
        except Exception as exc:
            message = f"the worker could not start the wrapper: {describe(exc)}"
            if programs.finish(db, program, success=False, message=message):
                programs.add_message(db, program, "ERROR", message)
            raise

    def on_stop(self, token: Any, step: dict | None, message: Any = None) -> None:
        pjid = self._job_id(token, step, message, "stop")
        if pjid is None:
            return
        with Session(self.engine) as db:
            try:
                control.job_state(db, self.config, pjid)
            except NotFoundError as exc:
                return self._refuse(token, f"stop message rejected: {exc}")
        self.held.append(Held(token, "stop", pjid))

    def _job_id(self, token: Any, step, message, what: str) -> int | None:
        try:
            return step_job_id(step, message)
        except ValueError as exc:
            self._refuse(token, f"{what} message rejected: {exc}")
            return None

    def _holds(self, token: Any) -> bool:
        return any(held.token is token for held in self.held)

    def _refuse(self, token: Any, reason: str) -> None:
        log.error("%s; sent to the dead-letter queue", reason)
        self._settle(self.reject, token)

    def _settle(self, how: Callable[[Any], None], token: Any) -> None:
        try:
            how(token)
        except Exception as exc:  # noqa: BLE001 - the broker connection is going away
            log.error("could not settle a delivery: %s", describe(exc))

    # ---------------------------------------------------------------- the loop
    def poll(self) -> None:
        """Settle what can be settled; called after each delivery and on a timer."""
        for held in list(self.held):
            try:
                settled = self._pollers[held.kind](held)
            except NotFoundError as exc:  # the job's rows are gone: nothing to wait for
                self.held.remove(held)
                self._refuse(held.token, f"job {held.pjid}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a database hiccup: try again next poll
                reason = describe(exc)
                if reason != held.last_error:
                    log.error("job %s: checking its %s failed (tried again): %s",
                              held.pjid, held.kind, reason)
                    held.last_error = reason
                continue
            if settled:
                self.held.remove(held)
                self._settle(self.ack, held.token)

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
            waited = time.monotonic() - held.since
            if state.state == "queued" and waited > self.config.stale_seconds:
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
        if not isinstance(self._transport, RelionPikaTransport):
            log.warning("transport %s is not %s: a message without headers will end this "
                        "service", type(self._transport).__name__, TRANSPORT_NAME)
        for kind, queue, prefetch in (("run", RUN_QUEUE, config.worker_jobs),
                                      ("stop", STOP_QUEUE, STOP_PREFETCH)):
            # Raw bodies: read_delivery decodes them and refuses what it cannot read.
            self._transport.subscribe(
                queue, functools.partial(self._on_delivery, kind), acknowledgement=True,
                prefetch_count=prefetch, disable_mangling=True,
            )
        self._register_idle(0.2, self.supervisor.poll)
        log.info("worker %s ready: up to %d jobs at once", os.getpid(), config.worker_jobs)

    def _on_delivery(self, kind: str, header: Mapping[str, Any], body: bytes) -> None:
        self.supervisor.deliver(kind, header, header, body)
