"""RabbitMQ: the queues relion_zo uses, and sending its messages through zocalo's transport.

Queues (all durable quorum queues, so a message survives a broker restart):

- ``processing_recipe``: ``relion-zo dispatcher`` (or zocalo's Dispatcher) reads it; PATo,
  SynchWeb and ``relion-zo start`` write ``{"parameters": {"ispyb_process": PJID}}`` to it (the
  recipe is the job's ``ProcessingJob.recipe``), ``zocalo.go -r relion`` adds
  ``"recipes": ["relion"]``, and SynchWeb's Stop and ``relion-zo stop`` send the
  ``relion-stop`` recipe;
- ``relion``: recipe steps that run the wrapper, read by ``relion-zo worker``;
- ``relion.stop``: recipe steps that stop a job, read by ``relion-zo worker``.

Each has a dead-letter queue ``dlq.<name>``: a message a consumer rejects goes there at once
(relion_zo's services reject every message they cannot use, without requeue), and one that
keeps coming back (a consumer that nacks it with requeue, or dies holding it) goes there after
``DELIVERY_LIMIT`` deliveries instead of looping forever.

Nothing here connects at import time.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pika
import yaml

from relion_zo.errors import RelionZoError

log = logging.getLogger(__name__)

PROCESSING_RECIPE = "processing_recipe"
RUN_QUEUE = "relion"
STOP_QUEUE = "relion.stop"
QUEUES = (PROCESSING_RECIPE, RUN_QUEUE, STOP_QUEUE)
# Fanout exchanges zocalo's services use: status broadcasts, and commands to services.
EXCHANGES = ("transient.status", "command")
DELIVERY_LIMIT = 5
RUN_RECIPE = "relion"
STOP_RECIPE = "relion-stop"


class BrokerError(RelionZoError):
    """The message broker cannot be reached or refused an operation."""


def dead_letter_queue(queue: str) -> str:
    return f"dlq.{queue}"


def queue_arguments(queue: str) -> dict:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(queue),
    }


def rabbitmq_settings(zocalo_config: Path) -> dict:
    """The ``plugin: pika`` section of a zocalo configuration file."""
    from relion_zo.db import warn_if_readable_by_others

    try:
        data = yaml.safe_load(Path(zocalo_config).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise BrokerError(f"cannot read zocalo configuration {zocalo_config}: {exc.strerror}"
                          ) from None
    except (UnicodeDecodeError, yaml.YAMLError):
        raise BrokerError(f"zocalo configuration {zocalo_config} is not valid YAML") from None
    warn_if_readable_by_others(zocalo_config, "zocalo configuration")
    if not isinstance(data, dict):
        raise BrokerError(f"zocalo configuration {zocalo_config} must be a mapping")
    for section in data.values():
        if isinstance(section, dict) and section.get("plugin") == "pika":
            return section
    raise BrokerError(f"zocalo configuration {zocalo_config} has no 'plugin: pika' section")


def connection_parameters(zocalo_config: Path) -> pika.ConnectionParameters:
    mq = rabbitmq_settings(zocalo_config)
    host = str(mq.get("host", "localhost")).split(",")[0]
    return pika.ConnectionParameters(
        host=host,
        port=int(str(mq.get("port", 5672)).split(",")[0]),
        virtual_host=mq.get("vhost", "/"),
        credentials=pika.PlainCredentials(mq["username"], mq["password"]),
        connection_attempts=3,
        retry_delay=1,
    )


@contextlib.contextmanager
def _channel(zocalo_config: Path):
    """A channel on a short-lived connection of its own (administration, not messaging)."""
    try:
        connection = pika.BlockingConnection(connection_parameters(zocalo_config))
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"cannot connect to RabbitMQ: {exc!r}") from None
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def declare(zocalo_config: Path) -> None:
    """Create relion_zo's queues, their dead-letter queues and zocalo's exchanges.
    Idempotent; a queue that exists with other arguments is an error naming it."""
    with _channel(zocalo_config) as channel:
        for exchange in EXCHANGES:
            channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
        for queue in QUEUES:
            for name, arguments in (
                (dead_letter_queue(queue), {"x-queue-type": "quorum"}),
                (queue, queue_arguments(queue)),
            ):
                try:
                    channel.queue_declare(name, durable=True, arguments=arguments)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    raise BrokerError(
                        f"queue {name} exists with other settings than relion_zo's "
                        f"({exc.reply_text}); delete it or align it"
                    ) from None


def queue_depths(zocalo_config: Path, queues=None) -> dict[str, int]:
    """Messages ready in each queue (passive declare; for tests and ``status``)."""
    names = queues or [q for base in QUEUES for q in (base, dead_letter_queue(base))]
    with _channel(zocalo_config) as channel:
        return {
            name: channel.queue_declare(name, passive=True).method.message_count
            for name in names
        }


def consumers(zocalo_config: Path, queue: str) -> int:
    with _channel(zocalo_config) as channel:
        return channel.queue_declare(queue, passive=True).method.consumer_count


def publish_raw(
    zocalo_config: Path, queue: str, body: bytes, headers: dict | None = None
) -> None:
    """One persistent message, exactly as given (tests and operators' repairs). With
    ``headers=None`` it has no headers table at all, as most AMQP clients send it."""
    with _channel(zocalo_config) as channel:
        channel.basic_publish(
            "", queue, body,
            pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                 headers=headers),
        )


def purge(zocalo_config: Path, queues) -> None:
    with _channel(zocalo_config) as channel:
        for name in queues:
            channel.queue_purge(name)


def start_message(processing_job_id: int) -> dict:
    """What PATo and SynchWeb send for a job they wrote: no recipe, the job's own is used."""
    return {"parameters": {"ispyb_process": processing_job_id}}


def recipe_message(recipe: str, processing_job_id: int, **parameters) -> dict:
    """What ``zocalo.go -r RECIPE -p PJID`` sends."""
    return {"recipes": [recipe], "parameters": {"ispyb_process": processing_job_id, **parameters}}


def send(zocalo_config: Path, messages: list[dict], queue: str = PROCESSING_RECIPE) -> None:
    """Send messages to ``queue`` through zocalo's configured transport (persistent)."""
    import workflows.transport
    import zocalo.configuration

    try:
        zc = zocalo.configuration.from_file(str(zocalo_config))
        zc.activate()
        transport = workflows.transport.lookup("PikaTransport")()
        transport.connect()
    except Exception as exc:  # noqa: BLE001 - every way of not reaching the broker
        raise BrokerError(f"cannot connect to RabbitMQ ({zocalo_config}): {exc}") from None
    try:
        for message in messages:
            transport.send(queue, message)
    finally:
        transport.disconnect()
