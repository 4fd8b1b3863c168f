"""relion_zo's RabbitMQ transport, and what its services do with a delivery's body.

workflows 3.3's ``PikaTransport`` reads each delivery's AMQP headers in pika's own thread
(``dict(properties.headers)``), where a message published without a headers table — what most
AMQP clients send — raises, ends the connection and with it the service, again on every
redelivery. ``RelionPikaTransport`` is that transport with two guards:

- a delivery without headers is handed on as one with an empty headers table;
- an exception while a delivery is handed over is logged as one line and, on a subscription
  that acknowledges, the delivery is rejected without requeue (so it goes to the queue's
  dead-letter queue); pika's thread carries on.

It is registered under ``workflows.transport`` as ``RelionPikaTransport``; ``relion-zo
worker`` and ``relion-zo dispatcher`` consume with it in their own process
(``relion_zo.serve``), and a zocalo service elsewhere can use it with ``-t
RelionPikaTransport``. Its connection settings are PikaTransport's own (filled in by the
zocalo configuration's ``plugin: pika`` section); it adds no command line options.

What a service does with the body (``decode_body``) is here too: both of relion_zo's services
subscribe without workflows' JSON mangling and decode the body themselves, so that a body that
is not JSON is refused with a reason instead of being passed on as raw bytes. ``Unusable`` is
the error that says a delivery can never be used: dead-letter it, with its message as the reason.

Nothing here connects at import time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from workflows.transport.pika_transport import PikaTransport

log = logging.getLogger(__name__)

TRANSPORT_NAME = "RelionPikaTransport"
REASON_LIMIT = 300  # characters of a reason in the log
RECIPE_HEADER = "workflows-recipe"


class Unusable(ValueError):
    """A delivery that no retry can make usable: dead-letter it, with this as the reason."""


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters: log lines stay one line whatever
    a message holds."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """An exception as a one-line reason; a database error by its driver's message only."""
    if isinstance(exc, Unusable):
        return one_line(str(exc))
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error, with the SQL
    if orig is not None:
        return one_line(f"database error: {orig}")
    return one_line(f"{type(exc).__name__}: {exc}")


def json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for reasons."""
    for kind, types in (("null", type(None)), ("boolean", bool), ("number", (int, float)),
                        ("string", str), ("array", list), ("object", dict)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {one_line(text, 40)} is out of range")
    return number


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_body(body: bytes | str) -> Any:
    """A delivery's body as JSON: UTF-8 text, strict JSON (no NaN or Infinity, no number
    too large for a float). Raises ``Unusable`` with the reason otherwise."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise Unusable("the body is not UTF-8 text") from None
    elif isinstance(body, str):
        text = body
    else:
        raise Unusable(f"the body is a {type(body).__name__}, not text")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Unusable(f"the body is not JSON ({one_line(str(exc), 80)})") from None


def is_recipe_message(header: Mapping[str, Any]) -> bool:
    """Whether the headers say the body is a workflows recipe message (the values workflows
    accepts), compared without hashing, so that any header value is safe."""
    value = header.get(RECIPE_HEADER)
    return value is True or (not isinstance(value, bool) and value in ("True", "true", 1))


class RelionPikaTransport(PikaTransport):
    """PikaTransport that survives deliveries without headers and any exception in handing
    a delivery over (see the module's text)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._acknowledged: dict[int, bool] = {}

    @classmethod
    def add_command_line_options(cls, parser) -> None:
        """None of its own: PikaTransport's ``--rabbit-*`` options set the settings that
        this class shares with it (adding them twice would make the parser fail)."""

    def _subscribe(self, sub_id: int, channel: str, callback, *, acknowledgement=False,
                   **kwargs):
        self._acknowledged[sub_id] = bool(acknowledgement)
        return super()._subscribe(sub_id, channel, callback, acknowledgement=acknowledgement,
                                  **kwargs)

    def _subscribe_temporary(self, sub_id: int, channel_hint, callback, *,
                             acknowledgement=False, **kwargs):
        self._acknowledged[sub_id] = bool(acknowledgement)
        return super()._subscribe_temporary(sub_id, channel_hint, callback,
                                            acknowledgement=acknowledgement, **kwargs)

    def _call_message_callback(self, subscription_id: int, channel, method, properties,
                               body: bytes) -> None:
        """Runs in pika's thread for every delivery: nothing may escape from here."""
        try:
            if properties.headers is None:
                properties.headers = {}
            super()._call_message_callback(subscription_id, channel, method, properties, body)
        except Exception as exc:  # noqa: BLE001 - pika's thread must keep running
            self._reject_in_pika_thread(subscription_id, method, describe(exc))

    def _reject_in_pika_thread(self, subscription_id: int, method, reason: str) -> None:
        where = f"delivery {method.delivery_tag} from {method.routing_key or '(no queue)'}"
        if not self._acknowledged.get(subscription_id):
            log.error("%s dropped: %s", where, reason)
            return
        log.error("%s rejected to the dead-letter queue: %s", where, reason)
        try:
            self._pika_thread.nack(method.delivery_tag, subscription_id, requeue=False,
                                   transaction_id=None)
        except Exception as exc:  # noqa: BLE001 - e.g. a transaction open on that channel
            log.error("%s could not be rejected: %s", where, describe(exc))
