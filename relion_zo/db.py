"""Engines and sessions built from an ISPyB credentials file.

The file is ISPyB's own INI format (section ``[ispyb_sqlalchemy]`` with username, password, host,
port, database), named by a path or by ``ISPYB_CREDENTIALS``. The driver is mysqlclient
(``mysql+mysqldb``). Nothing here connects until a function is called.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relion_zo.errors import RelionZoError
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

SECTION = "ispyb_sqlalchemy"


class CredentialsError(RelionZoError, ValueError):
    """The credentials file is missing or incomplete."""


def url_from_credentials(path: str | os.PathLike[str] | None = None) -> URL:
    """Build the connection URL; ``URL.create`` keeps passwords with ``@`` or ``/`` intact."""
    path = path or os.environ.get("ISPYB_CREDENTIALS")
    if not path:
        raise CredentialsError("no ISPyB credentials file: set ISPYB_CREDENTIALS")
    parser = configparser.RawConfigParser()
    if not parser.read(path):
        raise CredentialsError(f"cannot read ISPyB credentials file {path}")
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
    return URL.create(
        "mysql+mysqldb",
        username=creds["username"],
        password=creds.get("password") or None,
        host=host,
        port=int(creds["port"]) if creds.get("port") else None,
        database=creds["database"],
        query=query,
    )


def make_engine(path: str | os.PathLike[str] | Path | None = None, **kwargs) -> Engine:
    # READ COMMITTED: after Start takes its row lock, its reads see what a concurrent Start
    # committed, so the duplicate guard cannot be fooled by an older snapshot.
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 3600)
    return create_engine(url_from_credentials(path), **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that is closed afterwards; the caller commits."""
    with Session(engine, expire_on_commit=False) as session:
        yield session
