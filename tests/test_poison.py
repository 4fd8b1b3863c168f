"""No poison message harms a service.

Every delivery relion_zo's dispatcher or worker cannot use is dead-lettered at once into its
queue's ``dlq.*``, with the reason as one log line; no ISPyB row is written for it; the
service process keeps running and handles the next good message. Afterwards a real job still
runs to success and a real Stop still works. All against the real RabbitMQ and MariaDB of the
local stack (the services are real processes); nothing is mocked, nothing skips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
from sqlalchemy.orm import Session

from conftest import row_counts
from relion_zo import broker, dispatch
from relion_zo.transport import Unusable, decode_body
from runner_helpers import Services
from runs import LiveVisit, job_status, site_config, write_site_file

PR, RUN, STOP = broker.PROCESSING_RECIPE, broker.RUN_QUEUE, broker.STOP_QUEUE
UNKNOWN = 999999999
LIMIT = 60.0  # guards against hangs, not speed
RECIPE = {"workflows-recipe": True}


def step_message(queue: str, pjid, **step) -> dict:
    """A recipe step as relion_zo's dispatcher sends it (``relion.json`` / ``relion-stop.json``)."""
    return {
        "environment": {"ID": "00000000-test"},
        "payload": None,
        "recipe": {"1": {"service": "relion_zo worker", "queue": queue,
                         "parameters": {"ispyb_process": str(pjid)}, **step},
                   "start": [[1, []]]},
        "recipe-path": [],
        "recipe-pointer": 1,
    }


@dataclass(frozen=True)
class Case:
    id: str
    queue: str
    body: bytes | Callable[[int], object]  # bytes as they are, or f(a known job id) -> JSON
    reason: str  # what the service's log line says
    headers: dict | None = None  # None: no AMQP headers table at all

    def encoded(self, known_job: int) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body(known_job)).encode()


def known_parameters(**extra):
    return lambda known: {"parameters": {"ispyb_process": known}, **extra}


CASES = [
    # processing_recipe -> relion_zo's dispatcher
    Case("array", PR, b"[1]", "the body is a JSON array, not an object"),
    Case("string", PR, b'"x"', "the body is a JSON string, not an object"),
    Case("nul", PR, b"nul", "the body is not JSON"),
    Case("null", PR, b"null", "the body is a JSON null, not an object"),
    Case("not-utf8", PR, b"\xff\xfe{\x80}", "the body is not UTF-8 text"),
    Case("not-json", PR, b"start job 42 please", "the body is not JSON"),
    Case("not-json-with-headers", PR, b"<xml/>", "the body is not JSON", headers={"a": 1}),
    Case("empty-object", PR, b"{}", "'parameters' must be an object, not a JSON null"),
    Case("empty-parameters", PR, b'{"parameters": {}}', "the parameters name no ispyb_process"),
    Case("parameters-array", PR, b'{"parameters": []}',
         "'parameters' must be an object, not a JSON array"),
    Case("id-abc", PR, b'{"parameters": {"ispyb_process": "abc"}}',
         "ispyb_process 'abc' is not a processing job id"),
    Case("id-negative", PR, b'{"parameters": {"ispyb_process": -1}}',
         "ispyb_process -1 is not a processing job id"),
    Case("id-zero", PR, b'{"parameters": {"ispyb_process": 0}}',
         "ispyb_process 0 is not a processing job id"),
    Case("id-1e9999", PR, b'{"parameters": {"ispyb_process": 1e9999}}',
         "number 1e9999 is out of range"),
    Case("id-shell", PR, b'{"parameters": {"ispyb_process": "1; rm -rf"}}',
         "ispyb_process '1; rm -rf' is not a processing job id"),
    Case("id-unknown", PR, b'{"parameters": {"ispyb_process": %d}}' % UNKNOWN,
         f"unknown processing job {UNKNOWN}"),
    Case("id-unknown-with-recipe", PR,
         b'{"recipes": ["relion"], "parameters": {"ispyb_process": %d}}' % UNKNOWN,
         f"unknown processing job {UNKNOWN}", headers={"zocalo.go.user": "someone"}),
    Case("recipes-dotdot", PR, known_parameters(recipes=["../../evil"]),
         "recipe name '../../evil' is not a plain name"),
    Case("recipes-absolute", PR, known_parameters(recipes=["/etc/passwd"]),
         "recipe name '/etc/passwd' is not a plain name"),
    Case("recipes-string", PR, known_parameters(recipes="relion"),
         "'recipes' must be a list of recipe names, not 'relion'"),
    Case("recipes-not-there", PR, known_parameters(recipes=["no-such-recipe"]),
         "recipe 'no-such-recipe' is not in the recipe folder"),
    Case("custom-recipe", PR,
         known_parameters(custom_recipe={"1": {"queue": "relion"}, "start": [[1, []]]}),
         "custom recipes are not accepted"),
    Case("unexpected-key", PR, known_parameters(recipe="relion"), "unexpected key(s) 'recipe'"),
    Case("recipe-message", PR, lambda known: step_message(RUN, known),
         "unexpected key(s) 'environment', 'payload', 'recipe'", headers=RECIPE),
    # relion -> the worker's runs
    Case("run-recipe-header-no-recipe", RUN, b'{"payload": {"ispyb_process": 1}}',
         "the message has a workflows-recipe header but no recipe", headers=RECIPE),
    Case("run-recipe-header-array", RUN, b"[1]",
         "a recipe message must be a JSON object, not a JSON array", headers=RECIPE),
    Case("run-broken-recipe", RUN, b'{"recipe": {"1": {}}, "recipe-pointer": "one"}',
         "the recipe is broken", headers=RECIPE),
    Case("run-step-without-id", RUN, lambda known: step_message(RUN, known, parameters={}),
         "run message rejected: the message names no ispyb_process", headers=RECIPE),
    Case("run-not-utf8", RUN, b"\xff", "the body is not UTF-8 text"),
    Case("run-array", RUN, b"[1]", "run message rejected: the message names no ispyb_process"),
    Case("run-bad-id", RUN, lambda known: step_message(RUN, "1; rm -rf"),
         "ispyb_process '1; rm -rf' is not a processing job id", headers=RECIPE),
    Case("run-unknown", RUN, b'{"ispyb_process": %d}' % UNKNOWN,
         f"run message rejected: unknown processing job {UNKNOWN}"),
    # relion.stop -> the worker's stops
    Case("stop-recipe-header-no-recipe", STOP, b"{}",
         "the message has a workflows-recipe header but no recipe", headers=RECIPE),
    Case("stop-recipe-header-string", STOP, b'"stop"',
         "a recipe message must be a JSON object, not a JSON string", headers=RECIPE),
    Case("stop-not-json", STOP, b"nul", "the body is not JSON"),
    Case("stop-bad-id", STOP, b'{"ispyb_process": "1; rm -rf"}',
         "ispyb_process '1; rm -rf' is not a processing job id"),
    Case("stop-unknown", STOP, lambda known: step_message(STOP, UNKNOWN),
         f"stop message rejected: unknown processing job {UNKNOWN}", headers=RECIPE),
]


class LogWatch:
    """What the services wrote to their logs since the last ``mark``."""

    def __init__(self, services: Services):
        self.services = services
        self.sizes: dict[Path, int] = {}

    def mark(self) -> None:
        self.sizes = {p: p.stat().st_size for p in self.services.log_files if p.exists()}

    def new_text(self) -> str:
        parts = []
        for path in self.services.log_files:
            with open(path, "rb") as handle:
                handle.seek(self.sizes.get(path, 0))
                parts.append(handle.read().decode(errors="replace"))
        return "".join(parts)


class Poison:
    """The module's services (one dispatcher, one worker running two jobs at once) and a
    committed visit whose jobs prove the services still serve."""

    def __init__(self, engine, stack_settings, folder: Path):
        self.engine = engine
        self.zocalo = stack_settings.zocalo_config_path
        self.site = site_config(folder, stack_settings, idle_seconds=0, worker_jobs=2)
        self.services = Services(write_site_file(self.site, folder / "site.yaml"),
                                 stack_settings, folder / "logs")
        self.logs = LogWatch(self.services)
        self.visit = LiveVisit(engine, self.site, movies=1)
        self.known_job = self.final_job()  # a job that exists, for faults other than the id

    # ------------------------------------------------------------ the database
    def rows(self) -> dict[str, int]:
        with Session(self.engine) as db:
            return row_counts(db)

    def final_job(self) -> int:
        """A job stopped before it started: a good run or stop for it is handled and acked
        without starting anything."""
        pjid = self.visit.start()
        self.services.capture(["stop", "--config", str(self.services.site_file), str(pjid),
                               "--local"])  # the web side asks, the processing side closes
        self.services.capture(["reap", "--config", str(self.services.site_file)])
        assert job_status(self.engine, self.site, pjid).state == "stopped"
        return pjid

    def wait_state(self, pjid: int, states: set[str]) -> str:
        deadline = time.monotonic() + LIMIT
        while (state := job_status(self.engine, self.site, pjid).state) not in states:
            assert time.monotonic() < deadline, f"job {pjid} still {state} after {LIMIT} s"
            time.sleep(0.1)
        return state

    # ------------------------------------------------------------ the broker
    def purge(self) -> None:
        broker.purge(self.zocalo, [q for base in broker.QUEUES
                                   for q in (base, broker.dead_letter_queue(base))])

    def depth(self, queue: str) -> int:
        return broker.queue_depths(self.zocalo, [queue])[queue]

    def wait_until(self, check, what: str) -> None:
        deadline = time.monotonic() + LIMIT
        while not check():
            assert time.monotonic() < deadline, f"{what} did not happen within {LIMIT} s"
            time.sleep(0.05)

    def wait_idle(self) -> None:
        self.wait_until(self.services.idle, "every delivery settled")

    def publish(self, queue: str, body: bytes, headers: dict | None = None) -> None:
        broker.publish_raw(self.zocalo, queue, body, headers=headers)

    def good_message(self, queue: str) -> None:
        """A good message on ``queue`` for the final job: handled and acknowledged."""
        pjid = self.known_job
        if queue == PR:  # PATo's and SynchWeb's request: no recipe, no headers
            self.publish(PR, json.dumps({"parameters": {"ispyb_process": pjid}}).encode())
        else:
            self.publish(queue, json.dumps(step_message(queue, pjid)).encode(), RECIPE)
        self.wait_idle()
        assert job_status(self.engine, self.site, pjid).state == "stopped"


@pytest.fixture(scope="module")
def poison(engine, stack_settings, tmp_path_factory):
    folder = tmp_path_factory.mktemp("poison")
    broker.declare(stack_settings.zocalo_config_path)
    env = Poison(engine, stack_settings, folder)
    env.purge()
    try:
        env.services.dispatcher()
        env.services.worker()
        yield env
    finally:
        env.services.stop_all()
        env.purge()
        env.visit.remove()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_poison_is_dead_lettered_at_once_and_the_service_serves_on(poison, case):
    dlq = broker.dead_letter_queue(case.queue)
    poison.purge()
    rows = poison.rows()
    poison.logs.mark()

    poison.publish(case.queue, case.encoded(poison.known_job), case.headers)
    poison.wait_until(lambda: poison.depth(dlq) == 1, f"the message in {dlq}")

    poison.wait_until(lambda: case.reason in poison.logs.new_text(), "the reason in the log")
    text = poison.logs.new_text()
    (line,) = [line for line in text.splitlines() if case.reason in line]
    assert "dead-letter" in line or "sent to dlq" in line, line
    assert "Traceback" not in text, text
    assert poison.rows() == rows
    assert poison.services.alive()

    poison.good_message(case.queue)  # the service still handles a good message at once
    assert poison.services.alive()


def test_a_burst_of_poison_does_not_keep_a_real_job_from_success_or_a_stop(poison):
    """Every poison message at once, while a real job runs: the job ends in success, every
    poison message is dead-lettered, a new job still runs and a Stop still stops one."""
    poison.purge()
    running = poison.visit.start()
    broker.send(poison.zocalo, [broker.recipe_message(broker.RUN_RECIPE, running)])
    poison.wait_state(running, {"running", "success"})
    for case in CASES:
        poison.publish(case.queue, case.encoded(poison.known_job), case.headers)
    assert poison.wait_state(running, {"success", "failure", "stopped"}) == "success"
    expected = {q: sum(c.queue == q for c in CASES) for q in broker.QUEUES}
    poison.wait_until(lambda: all(poison.depth(broker.dead_letter_queue(q)) == n
                                  for q, n in expected.items()), "every poison message dead")
    poison.wait_idle()

    again = poison.visit.start()  # PATo's message, without headers
    poison.publish(PR, json.dumps({"parameters": {"ispyb_process": again}}).encode())
    assert poison.wait_state(again, {"success", "failure", "stopped"}) == "success"

    stopped = poison.visit.start()
    out = poison.services.capture(["stop", "--config", str(poison.services.site_file),
                                   str(stopped), "--wait", "30"])
    assert "stopped" in out
    assert job_status(poison.engine, poison.site, stopped).state == "stopped"
    poison.wait_idle()
    assert poison.services.alive()


def test_unknown_stops_do_not_fill_the_prefetch(poison):
    """Stops for jobs nobody knows are refused at once, so a real Stop behind more of them
    than the worker's stop prefetch still gets through."""
    poison.purge()
    for offset in range(12):
        poison.publish(STOP, json.dumps(step_message(STOP, UNKNOWN - offset)).encode(), RECIPE)
    pjid = poison.visit.start()
    poison.services.capture(["stop", "--config", str(poison.services.site_file), str(pjid),
                             "--wait", "30"])
    assert job_status(poison.engine, poison.site, pjid).state == "stopped"
    poison.wait_until(lambda: poison.depth(broker.dead_letter_queue(STOP)) == 12,
                      "twelve unknown stops dead-lettered")
    poison.wait_idle()


def test_zocalo_go_and_the_web_uis_messages_both_start_a_job(poison):
    """``{"parameters": {"ispyb_process": N}}`` (PATo, SynchWeb) and ``{"recipes":
    ["relion"], ...}`` (zocalo.go -r relion) reach a run; the job's stored recipe names it."""
    poison.purge()
    for message in ({"parameters": {"ispyb_process": None}},
                    {"recipes": ["relion"], "parameters": {"ispyb_process": None}}):
        pjid = poison.visit.start()
        message["parameters"]["ispyb_process"] = pjid
        broker.send(poison.zocalo, [message])
        assert poison.wait_state(pjid, {"success", "failure", "stopped"}) == "success"
    poison.wait_idle()
    assert set(broker.queue_depths(poison.zocalo).values()) == {0}


def test_rabbitmq_refuses_guest_and_serves_relion_zo(stack_settings):
    with pytest.raises(pika.exceptions.AMQPError):
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=stack_settings.rabbitmq_port,
            credentials=pika.PlainCredentials("guest", "guest"), connection_attempts=1))
    assert "loopback_users" not in (stack_settings.rabbitmq_dir / "rabbitmq.conf").read_text()
    assert broker.queue_depths(stack_settings.zocalo_config_path, [PR])[PR] >= 0


def test_the_transport_rejects_a_delivery_whose_callback_raises(stack_settings, caplog):
    """RelionPikaTransport outside any service, where a callback runs in pika's own thread:
    a message without headers reaches it; one whose callback raises is logged and rejected
    into the dead-letter queue, and the connection serves the next message."""
    import zocalo.configuration

    from relion_zo.transport import RelionPikaTransport

    zocalo_config = stack_settings.zocalo_config_path
    queue = "relion_zo.test.transport"
    dlq = broker.dead_letter_queue(queue)
    connection = pika.BlockingConnection(broker.connection_parameters(zocalo_config))
    channel = connection.channel()
    channel.queue_declare(dlq, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_declare(queue, durable=True, arguments=broker.queue_arguments(queue))
    zocalo.configuration.from_file(str(zocalo_config)).activate()
    transport = RelionPikaTransport()
    transport.connect()
    seen = []

    def callback(header, body):
        seen.append((dict(header), body))
        if body == b"boom":
            raise RuntimeError("boom")
        transport.ack(header)

    try:
        transport.subscribe(queue, callback, acknowledgement=True, disable_mangling=True)
        for body in (b"boom", b"fine"):
            broker.publish_raw(zocalo_config, queue, body, headers=None)
        deadline = time.monotonic() + LIMIT
        while len(seen) < 2 or channel.queue_declare(dlq, passive=True).method.message_count < 1:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert [body for _, body in seen] == [b"boom", b"fine"]
        assert seen[0][0]["routing_key"] == queue  # the headers the transport adds are there
        assert transport.is_connected()
        assert f"from {queue} rejected to the dead-letter queue: RuntimeError: boom" in caplog.text
    finally:
        transport.disconnect()
        channel.queue_delete(queue)
        channel.queue_delete(dlq)
        connection.close()


# ---------------------------------------------------------------- pure pieces (no servers)

@pytest.mark.parametrize("recipes", [["../../evil"], ["/etc/passwd"], ["a/b"], [".hidden"],
                                     ["re..lion"], [""], [None], [["relion"]], "relion", 7])
def test_the_zocalo_dispatcher_filter_refuses_recipe_names_that_are_not_plain(recipes):
    with pytest.raises(ValueError, match="plain name|must be a list"):
        dispatch.ispyb_job_filter({"recipes": recipes}, {"ispyb_process": "42"})


@pytest.mark.parametrize("value", [True, 1.0, "١٢", "²", " ", "1e3", "0x1f", 2**32,
                                   "9" * 5000, [1], {"a": 1}])
def test_job_ids_are_plain_positive_integers(value):
    with pytest.raises(ValueError, match="is not a processing job id"):
        dispatch.parse_job_id(value)


@pytest.mark.parametrize("body", [b"NaN", b'{"a": Infinity}', b"[" * 100000, b"\xc3(",
                                  b"", b"{'a': 1}"])
def test_bodies_that_are_not_strict_json_are_unusable(body):
    with pytest.raises(Unusable):
        decode_body(body)
