"""Engines and sessions built from an ISPyB credentials file.

The file is ISPyB's own INI format (section ``[ispyb_sqlalchemy]`` with username, password, host,
port, database), named by a path or by ``ISPYB_CREDENTIALS``. The driver is mysqlclient
(``mysql+mysqldb``). Nothing here connects until a function is called.

mysqlclient turns each DATETIME and TIMESTAMP value into a ``datetime`` in Python code (about
2 µs a value); ``make_engine`` gives it ``datetime.fromisoformat`` instead (C, under 0.2 µs),
with mysqlclient's own conversion for any text that is not a plain ISO date and time (a zero date
still becomes None). A visit's status has two times a job (docs/performance.md).
"""

from __future__ import annotations

import configparser
import datetime as dt
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from MySQLdb import converters, times
from MySQLdb.constants import FIELD_TYPE
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from relion_zo.errors import RelionZoError

SECTION = "ispyb_sqlalchemy"
log = logging.getLogger(__name__)


class CredentialsError(RelionZoError, ValueError):
    """The credentials file is missing or incomplete."""


def url_from_credentials(path: str | os.PathLike[str] | None = None) -> URL:
    """Build the connection URL; ``URL.create`` keeps passwords with ``@`` or ``/`` intact."""
    path = path or os.environ.get("ISPYB_CREDENTIALS")
    if not path:
        raise CredentialsError("no ISPyB credentials file: set ISPYB_CREDENTIALS")
    parser = read_private_ini(path, "ISPyB credentials file", CredentialsError)
    if not parser.has_section(SECTION):
        raise CredentialsError(f"{path} has no [{SECTION}] section")
    creds = dict(parser.items(SECTION))
    missing = [k for k in ("username", "database") if not creds.get(k)]
    if missing:
        raise CredentialsError(f"{path}: [{SECTION}] lacks {', '.join(missing)}")
    query = {}
    host = creds.get("host") or None
    if creds.get("unix_socket"):
        query["unix_socket"] = creds["unix_socket"]
    elif host is None:
        raise CredentialsError(f"{path}: [{SECTION}] needs host (and port) or unix_socket")
    port = creds.get("port", "").strip()
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise CredentialsError(f"{path}: [{SECTION}] port is not a port number")
    return URL.create(
        "mysql+mysqldb",
        username=creds["username"],
        password=creds.get("password") or None,
        host=host,
        port=int(port) if port else None,
        database=creds["database"],
        query=query,
    )


def warn_if_readable_by_others(path: str | os.PathLike[str], what: str) -> None:
    """A file with a password that other users can read is used, with a warning."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s can be read by other users (mode %o); chmod 600 it", what, path,
                    stat.S_IMODE(mode))


def read_private_ini(path, what: str, error: type[Exception]) -> configparser.RawConfigParser:
    """Parse an INI file that holds a password. Errors name the line, never its text."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    warn_if_readable_by_others(path, what)
    parser = configparser.RawConfigParser(strict=True, interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise error(f"{what} {path} line {exc.lineno}: a setting before any [section] "
                    "header") from None
    except configparser.DuplicateOptionError as exc:
        raise error(f"{what} {path} line {exc.lineno}: option {exc.option!r} is given twice "
                    f"in [{exc.section}]") from None
    except configparser.DuplicateSectionError as exc:
        raise error(f"{what} {path} line {exc.lineno}: section [{exc.section}] is given "
                    "twice") from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _ in exc.errors)
        raise error(f"{what} {path}: cannot parse line(s) {lines}") from None
    except configparser.Error as exc:
        raise error(f"{what} {path} is not a valid INI file ({type(exc).__name__})") from None
    return parser


def datetime_or_none(value: str) -> dt.datetime | dt.date | None:
    """A DATETIME or TIMESTAMP value as mysqlclient gives it, converted in C when it is the
    server's plain ``YYYY-MM-DD HH:MM:SS[.ffffff]``; anything else as mysqlclient converts it."""
    if len(value) >= 19:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return times.DateTime_or_None(value)


def conversions() -> dict:
    """mysqlclient's own conversions, with ``datetime_or_none`` for DATETIME and TIMESTAMP."""
    conv = dict(converters.conversions)
    conv[FIELD_TYPE.DATETIME] = conv[FIELD_TYPE.TIMESTAMP] = datetime_or_none
    return conv


def make_engine(path: str | os.PathLike[str] | Path | None = None, **kwargs) -> Engine:
    # READ COMMITTED: after Start takes its row lock, its reads see what a concurrent Start
    # committed, so the duplicate guard cannot be fooled by an older snapshot.
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 3600)
    kwargs["connect_args"] = {"conv": conversions(), **kwargs.get("connect_args", {})}
    return create_engine(url_from_credentials(path), **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that is closed afterwards; the caller commits."""
    with Session(engine, expire_on_commit=False) as session:
        yield session
