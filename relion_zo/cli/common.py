"""What every subcommand shares: options for the site file, opening the database, errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from relion_zo import schema
from relion_zo.config import SiteConfig, load_config
from relion_zo.db import make_engine
from relion_zo.errors import RelionZoError


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (``error: PROG: ...``), exit status 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def identifier(text: str) -> int:
    """A database id on the command line: ASCII digits only, positive, of a sane size."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an id (a positive number)")
    return int(text)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="site file (default: $RELION_ZO_CONFIG)"
    )


def open_site(args: argparse.Namespace, side: str) -> tuple[SiteConfig, Engine]:
    """The site file and an engine with the ISPyB credentials of ``side`` ("web" for Start,
    stop, restart, reprocess; "processing" for the rest: docs/ispyb.md)."""
    config = load_config(args.config)
    engine = make_engine(config.credentials_path(side))
    try:
        schema.check(engine, side)
    except BaseException:
        engine.dispose()
        raise
    return config, engine


def who() -> str:
    """``user@host`` of this shell, for the record of who asked for a stop."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


log = logging.getLogger(__name__)


class _Warnings(logging.Handler):
    """relion_zo's warnings as ``warning: ...`` lines on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def show_warnings() -> None:
    """Commands show relion_zo's warnings even when logging is not set up (once)."""
    package = logging.getLogger("relion_zo")
    if not any(isinstance(h, _Warnings) for h in package.handlers):
        handler = _Warnings(logging.WARNING)
        package.addHandler(handler)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def guarded(func: Callable[[], int]) -> int:
    """Run a command body. Every error becomes one line on stderr and exit status 1, never a
    traceback: user errors as they are, database and file errors with their reason, anything
    else as its type (the traceback goes to the debug log)."""
    show_warnings()
    try:
        return func()
    except RelionZoError as exc:
        message = str(exc)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        message = f"database: {orig if orig is not None else type(exc).__name__}"
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or type(exc).__name__}:{where}" if where else (
            exc.strerror or str(exc) or type(exc).__name__)
    except UnicodeError:
        message = "a name or file is not valid UTF-8"
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the trace in the log
        log.debug("unexpected error", exc_info=True)
        message = f"unexpected {type(exc).__name__}: {exc}"
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 1


def check_broker(zocalo) -> None:
    """Reach RabbitMQ and the queue Start sends to, or raise ``BrokerError``."""
    from relion_zo import broker

    broker.queue_depths(zocalo, [broker.PROCESSING_RECIPE])


def send_job(zocalo, pjid: int) -> None:
    """Send a written job. If that fails the job stays ``submitted``: the same Start again
    sends it again (``resend_submitted``) instead of being refused."""
    from relion_zo import broker

    try:
        broker.send(zocalo, [broker.start_message(pjid)])
    except broker.BrokerError as exc:
        raise broker.BrokerError(
            f"processing job {pjid} was written but not sent ({exc}); run the same start again "
            f"to send it, or stop it with: relion-zo stop --local {pjid}"
        ) from None


def setup_logging(verbose: bool = False) -> None:
    package = logging.getLogger("relion_zo")
    for handler in [h for h in package.handlers if isinstance(h, _Warnings)]:
        package.removeHandler(handler)  # the log shows warnings from now on
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
