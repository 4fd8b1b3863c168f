"""One process per service: relion_zo's dispatcher and worker consume in the process a service
manager starts, and come back by themselves after a RabbitMQ restart.

``serve`` connects a ``RelionPikaTransport``, subscribes the service's queues, hands each
delivery to its handler in this (main) thread, and calls the service's ``poll`` between
deliveries. When the connection drops it connects again with backoff: the broker has put the
unacknowledged deliveries back in their queues, and the service forgets their tokens. A SIGTERM
(``stop`` set by the caller) ends the loop after the current delivery; killing the process in
any way leaves no consumer behind, because the consumer is this process's own connection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from relion_zo.transport import RelionPikaTransport, describe

log = logging.getLogger(__name__)

Handler = Callable[[Mapping[str, Any], bytes], None]
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0)


class Service(Protocol):
    def subscriptions(self) -> list[tuple[str, int, Handler]]:
        """(queue, prefetch count, handler) for each queue the service reads."""

    def attach(self, transport) -> None:
        """The transport of the current connection (to acknowledge, reject and send)."""

    def detach(self) -> None:
        """The connection is gone: forget the tokens of deliveries not yet settled."""

    def poll(self) -> None:
        """Periodic work between deliveries; must not raise."""


def activate(zocalo_config: Path) -> None:
    import zocalo.configuration

    zocalo.configuration.from_file(str(zocalo_config)).activate()


def serve(
    service: Service,
    zocalo_config: Path,
    *,
    stop: threading.Event,
    ready: str,
    poll_seconds: float = 0.2,
    transport_factory: Callable[[], Any] = RelionPikaTransport,
) -> int:
    """Consume until ``stop`` is set; returns 0. ``ready`` is logged once subscribed."""
    activate(zocalo_config)
    failures = 0
    while not stop.is_set():
        transport = transport_factory()
        try:
            transport.connect()
        except Exception as exc:  # noqa: BLE001 - every way of not reaching the broker
            delay = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
            if failures == 0:
                log.warning("cannot reach RabbitMQ (%s); trying again", describe(exc))
            failures += 1
            stop.wait(delay)
            continue
        if failures:
            log.info("connected to RabbitMQ again after %d attempt(s)", failures)
        failures = 0
        deliveries: queue.Queue = queue.Queue()
        service.attach(transport)
        try:
            for name, prefetch, handler in service.subscriptions():
                transport.subscribe(
                    name, lambda header, body, h=handler: deliveries.put((h, header, body)),
                    acknowledgement=True, prefetch_count=prefetch, disable_mangling=True,
                )
        except Exception as exc:  # noqa: BLE001 - the connection went away while subscribing
            log.warning("subscribing failed (%s); connecting again", describe(exc))
            _close(transport)
            service.detach()
            continue
        log.info(ready)
        _consume(service, transport, deliveries, stop, poll_seconds)
        _close(transport)
        service.detach()
        if not stop.is_set():
            log.warning("lost the connection to RabbitMQ; connecting again")
            time.sleep(RECONNECT_BACKOFF[0])
    return 0


def _consume(service: Service, transport, deliveries: queue.Queue, stop: threading.Event,
             poll_seconds: float) -> None:
    while not stop.is_set() and transport.is_connected():
        try:
            handler, header, body = deliveries.get(timeout=poll_seconds)
        except queue.Empty:
            pass
        else:
            handler(header, body)
        service.poll()


def _close(transport) -> None:
    try:
        transport.disconnect()
    except Exception as exc:  # noqa: BLE001 - already gone
        log.debug("disconnect: %s", describe(exc))
