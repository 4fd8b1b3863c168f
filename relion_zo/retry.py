"""Riding out a database outage: which errors are worth waiting for, and how long to wait.

A MariaDB restart, a network blip or a lock held by another transaction makes a statement
fail; the same statement a little later succeeds. ``retrying`` runs a transaction function
again with backoff until it succeeds or ``limit_seconds`` have passed (then the last error is
raised as ``DatabaseUnavailable``). Errors that waiting cannot mend (a denied privilege, a bad
statement) are raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from relion_zo.errors import RelionZoError

log = logging.getLogger(__name__)
T = TypeVar("T")

# MariaDB client and server error numbers that mean "try again later".
TRANSIENT_CODES = frozenset({
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout exceeded
    1213,  # deadlock found
    1927,  # connection was killed
    2002, 2003, 2005, 2006, 2013, 2026, 2055,  # cannot connect / server gone / lost connection
    4031,  # disconnected by the server because of inactivity
})
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class DatabaseUnavailable(RelionZoError):
    """The database stayed unreachable for longer than the configured limit."""


def error_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_transient(exc: BaseException) -> bool:
    """True for an error that may go away by itself (connection lost, lock timeout)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        code = error_code(exc)
        return code is None or code in TRANSIENT_CODES
    return False


def retrying(
    work: Callable[[], T],
    what: str,
    limit_seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``work()`` until it succeeds; transient database errors are retried with backoff for
    up to ``limit_seconds``, then raised as ``DatabaseUnavailable`` naming ``what``."""
    deadline = clock() + limit_seconds
    attempt = 0
    while True:
        try:
            return work()
        except (OperationalError, DBAPIError) as exc:
            if not is_transient(exc):
                raise
            now = clock()
            if now >= deadline:
                raise DatabaseUnavailable(
                    f"{what}: the database was unreachable for {limit_seconds:.0f} s "
                    f"({error_code(exc) or type(exc).__name__})") from None
            delay = min(BACKOFF[min(attempt, len(BACKOFF) - 1)], deadline - now)
            if attempt == 0:
                log.warning("%s: database unavailable (%s); retrying for up to %.0f s",
                            what, error_code(exc) or type(exc).__name__, limit_seconds)
            attempt += 1
            sleep(delay)
