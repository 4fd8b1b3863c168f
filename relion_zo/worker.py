"""``relion-zo worker``: consume run and stop messages, start a wrapper process per job.

The logic lives in ``Supervisor``, a plain class whose side effects come in as arguments
(the job manager, how to start a wrapper, how to acknowledge or reject a delivery), so tests
drive it without a broker; ``relion_zo.serve`` connects it to RabbitMQ in this one process.

A job's life is recorded in ISPyB, not in a broker delivery:

- a run for a ``submitted`` job: claim its AutoProcProgram, start the wrapper process (a
  session of its own, which outlives this worker), then acknowledge at once. The wrapper beats,
  watches for a stop request and writes its own final status, through RabbitMQ restarts and
  worker restarts alike. At most ``worker_jobs`` wrappers run from one worker: a further run
  waits, unacknowledged, until one ends (the prefetch count is 1, so other workers take the rest);
- a run for a job that already has a program (a double click, a redelivery): acknowledged at
  once, nothing started;
- a stop: the request is recorded in ISPyB (``JobManager.request_stop``) and acknowledged;
- a wrapper that ends without a final status: the worker ends what it left in the project and
  records ``Wrapper crashed``; a lost job whose wrapper ran on this host and is gone is closed
  the same way (``Lost``); a lost job of another host only once this worker has reached the
  database for longer than the stale limit (its own outage is not the wrapper's death);
- a delivery the worker cannot use is rejected without requeue at once (its dead-letter queue),
  with the reason as one log line; a delivery that meets a database outage is kept and tried
  again with backoff for ``database_retry_seconds``, never dead-lettered within a second.
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
from sqlalchemy.exc import SQLAlchemyError

from relion_zo import control
from relion_zo.broker import PROCESSING_RECIPE, RUN_QUEUE, STOP_QUEUE
from relion_zo.dispatch import step_job_id
from relion_zo.errors import NotFoundError, RelionZoError
from relion_zo.manager import JobManager, Outcome
from relion_zo.retry import DatabaseUnavailable, is_transient
from relion_zo.runner import environment_text
from relion_zo.transport import Unusable, decode_body, describe, is_recipe_message, json_kind

log = logging.getLogger(__name__)

READY_TEXT = "ready: up to"  # logged once the worker consumes its queues
STOP_PREFETCH = 10
RETRY_BACKOFF = (1.0, 2.0, 5.0, 10.0)


@dataclass
class Delivery:
    """A delivery the worker has not settled yet (waiting for a slot or for the database)."""

    kind: str  # "run" or "stop"
    token: Any
    pjid: int
    since: float = field(default_factory=time.monotonic)
    attempts: int = 0
    next_try: float = 0.0


@dataclass
class Wrapper:
    pjid: int
    program: int
    process: Any


def spawn_wrapper(pjid: int, program: int, env: dict[str, str] | None = None
                  ) -> subprocess.Popen:
    """The wrapper process for one run (``relion_zo.child``), in a session of its own, so it
    outlives this worker and a signal to the worker's process group does not reach it."""
    return subprocess.Popen(
        [sys.executable, "-m", "relion_zo.child", str(pjid), str(program)],
        stdin=subprocess.DEVNULL, start_new_session=True, env=env,
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
        manager: JobManager,
        *,
        ack: Callable[[Any], None],
        reject: Callable[[Any], None],
        spawn: Callable[[int, int], Any] = spawn_wrapper,
        send: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.manager = manager
        self.config = manager.config
        self.ack = ack
        self.reject = reject
        self.spawn = spawn
        self.send = send
        self.clock = clock
        self.last_sent: dict[int, float] = {}
        self.pending: list[Delivery] = []
        self.wrappers: list[Wrapper] = []
        self.database_ok_since: float | None = None
        self.next_reap = 0.0
        # Explicit registry: what a delivery of each kind does.
        self._handlers = {"run": self._run, "stop": self._stop}

    # ---------------------------------------------------------------- deliveries
    def deliver(self, kind: str, token: Any, header: Mapping[str, Any], body: Any) -> None:
        """One delivery on the run (``kind`` "run") or stop queue; never raises."""
        try:
            step, message = read_delivery(header, body)
            pjid = step_job_id(step, message)
        except (Unusable, ValueError) as exc:
            return self._refuse(token, f"{kind} message rejected: {exc}")
        except Exception as exc:  # noqa: BLE001 - no delivery may end the worker
            return self._refuse(token, f"{kind} message rejected: {describe(exc)}")
        self._try(Delivery(kind, token, pjid))

    def _try(self, delivery: Delivery) -> None:
        """Handle a delivery now, or keep it for later (no free slot, database away)."""
        try:
            done = self._handlers[delivery.kind](delivery)
        except NotFoundError as exc:
            done = True
            self._refuse(delivery.token, f"{delivery.kind} message rejected: {exc}")
        except (RelionZoError, SQLAlchemyError) as exc:
            if not (isinstance(exc, DatabaseUnavailable)
                    or isinstance(exc, SQLAlchemyError) and is_transient(exc)):
                done = True
                self._refuse(delivery.token, f"{delivery.kind} message for job "
                             f"{delivery.pjid} rejected: {describe(exc)}")
            else:
                done = self._later(delivery, describe(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: never into the service loop
            done = True
            self._refuse(delivery.token, f"{delivery.kind} message for job {delivery.pjid} "
                         f"rejected: {describe(exc)}")
        if done:
            if delivery in self.pending:
                self.pending.remove(delivery)
        elif delivery not in self.pending:
            self.pending.append(delivery)

    def _later(self, delivery: Delivery, reason: str) -> bool:
        """A database outage: try again with backoff; give up (dead letter) after the limit."""
        waited = self.clock() - delivery.since
        if waited > self.config.database_retry_seconds:
            self._refuse(delivery.token, f"{delivery.kind} message for job {delivery.pjid}: "
                         f"the database was unreachable for {waited:.0f} s ({reason})")
            return True
        if delivery.attempts == 0:
            log.warning("job %s: %s message waits for the database (%s)", delivery.pjid,
                        delivery.kind, reason)
        delivery.next_try = self.clock() + RETRY_BACKOFF[min(delivery.attempts,
                                                             len(RETRY_BACKOFF) - 1)]
        delivery.attempts += 1
        self.database_ok_since = None
        return False

    def _run(self, delivery: Delivery) -> bool:
        pjid = delivery.pjid
        state = self.manager.state(pjid)
        if state.state != "submitted":
            log.info("job %s is already %s; not starting it again", pjid, state.state)
            self._settle(self.ack, delivery.token)
            return True
        if len(self.wrappers) >= self.config.worker_jobs:
            return False  # waits, unacknowledged, for a wrapper to end
        program = self.manager.claim(pjid, command_line=f"relion-zo worker (ispyb_process {pjid})",
                                     environment=environment_text())
        if program is None:
            log.info("job %s was claimed elsewhere a moment ago", pjid)
        else:
            try:
                process = self.spawn(pjid, program)
            except Exception as exc:
                self.manager.finish(program, Outcome(
                    "crashed", f"the worker could not start the wrapper: {describe(exc)}"))
                raise
            self.wrappers.append(Wrapper(pjid, program, process))
            log.info("job %s: program %s claimed, wrapper pid %s started", pjid, program,
                     getattr(process, "pid", "?"))
        self._settle(self.ack, delivery.token)
        return True

    def _stop(self, delivery: Delivery) -> bool:
        result = self.manager.request_stop(delivery.pjid, "a relion-stop message")
        log.info(result.message)
        self._settle(self.ack, delivery.token)
        return True

    def _refuse(self, token: Any, reason: str) -> None:
        log.error("%s; sent to the dead-letter queue", reason)
        self._settle(self.reject, token)

    def _settle(self, how: Callable[[Any], None], token: Any) -> None:
        try:
            how(token)
        except Exception as exc:  # noqa: BLE001 - the broker connection is going away
            log.error("could not settle a delivery: %s", describe(exc))

    def forget_deliveries(self) -> None:
        """The connection is gone: the broker has requeued what was not settled."""
        self.pending.clear()

    # ---------------------------------------------------------------- the loop
    def poll(self) -> None:
        """Wrappers that ended, deliveries waiting, lost jobs; never raises."""
        for wrapper in list(self.wrappers):
            try:
                self._check_wrapper(wrapper)
            except Exception as exc:  # noqa: BLE001 - the database: next poll
                log.warning("job %s: checking its wrapper failed: %s", wrapper.pjid,
                            describe(exc))
        now = self.clock()
        for delivery in list(self.pending):
            if delivery.next_try <= now:
                self._try(delivery)
        if now >= self.next_reap:
            self.next_reap = now + max(1.0, min(self.config.stale_seconds / 2, 30.0))
            try:
                self.reap()
                if self.database_ok_since is None:
                    self.database_ok_since = now
            except Exception as exc:  # noqa: BLE001 - the database: next time
                self.database_ok_since = None
                log.warning("looking for lost jobs failed: %s", describe(exc))

    def _check_wrapper(self, wrapper: Wrapper) -> None:
        code = wrapper.process.poll()
        if code is None:
            return
        if not self.manager.check(wrapper.program).final:
            # First end what the dead wrapper left running, then record why it ended.
            control.end_relion(self.manager, wrapper.pjid)
            how = (getattr(wrapper.process, "end_text", None)
                   or (f"signal {-code}" if code < 0 else f"exit status {code}"))
            if self.manager.finish(wrapper.program, Outcome(
                    "crashed", f"the wrapper process ended ({how}) without a final status")):
                log.error("job %s: wrapper ended (%s) without a final status; recorded",
                          wrapper.pjid, how)
        log.info("job %s: wrapper ended (%s)", wrapper.pjid, code)
        self.wrappers.remove(wrapper)

    def reap(self) -> list[int]:
        """Close lost jobs whose wrapper is gone (``control.reap``); remote ones only once
        this worker has reached the database for longer than the stale limit."""
        settled_for = (self.clock() - self.database_ok_since
                       if self.database_ok_since is not None else 0.0)
        closed = control.reap(self.manager, skip={w.pjid for w in self.wrappers},
                              include_remote=settled_for >= self.config.stale_seconds,
                              by="closed by a worker")
        control.rescue(self.manager, self.send, self.last_sent, self.clock,
                       starting={w.program for w in self.wrappers})
        return closed


# ---------------------------------------------------------------------------- the service


class WorkerService:
    """The ``Supervisor`` on RabbitMQ's run and stop queues (``relion_zo.serve.serve``)."""

    def __init__(self, supervisor: Supervisor, worker_jobs: int,
                 close: Callable[[], None] | None = None):
        self.supervisor = supervisor
        self.worker_jobs = worker_jobs
        self.close = close  # when the service ends (the fork server's; its wrappers live on)
        self.transport = None
        supervisor.ack = self._ack
        supervisor.reject = self._reject
        supervisor.send = self._send

    def subscriptions(self):
        # Prefetch 1: runs beyond worker_jobs wait here, one at most, unacknowledged.
        return [(RUN_QUEUE, 1, functools.partial(self._on, "run")),
                (STOP_QUEUE, STOP_PREFETCH, functools.partial(self._on, "stop"))]

    def _on(self, kind: str, header: Mapping[str, Any], body: bytes) -> None:
        self.supervisor.deliver(kind, header, header, body)

    def attach(self, transport) -> None:
        self.transport = transport

    def detach(self) -> None:
        self.transport = None
        self.supervisor.forget_deliveries()

    def poll(self) -> None:
        self.supervisor.poll()

    def _ack(self, header) -> None:
        self.transport.ack(header)

    def _reject(self, header) -> None:
        self.transport.nack(header, requeue=False)

    def _send(self, pjid: int) -> None:
        """A Start's message again, as the web UIs send it."""
        if self.transport is not None:
            self.transport.send(PROCESSING_RECIPE, {"parameters": {"ispyb_process": pjid}})


def ready_text(worker_jobs: int) -> str:
    return f"worker {os.getpid()} {READY_TEXT} {worker_jobs} jobs at once"
