"""Visits (BLSession rows) by name, and where their files live."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from ispyb.sqlalchemy import BLSession, Proposal
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from relion_zo.config import SiteConfig
from relion_zo.errors import InputError, NotFoundError

VISIT_NAME = re.compile(r"^([a-z]{2})([0-9]{1,10})-([0-9]{1,6})$")


@dataclass(frozen=True)
class Visit:
    session_id: int
    proposal_code: str
    proposal_number: str
    visit_number: int
    beamline: str | None
    start_date: dt.datetime | None

    @property
    def name(self) -> str:
        return f"{self.proposal_code}{self.proposal_number}-{self.visit_number}"


def parse_visit_name(name: str) -> tuple[str, str, int]:
    match = VISIT_NAME.match(name or "")
    if not match:
        raise InputError(f"visit {name!r} is not a visit name like cm12345-1")
    code, number, visit_number = match.groups()
    return code, number, int(visit_number)


def _select():
    return select(
        BLSession.sessionId,
        Proposal.proposalCode,
        Proposal.proposalNumber,
        BLSession.visit_number,
        BLSession.beamLineName,
        BLSession.startDate,
    ).join(Proposal, Proposal.proposalId == BLSession.proposalId)


def find_visit(db: Session | Connection, name: str) -> Visit:
    code, number, visit_number = parse_visit_name(name)
    row = db.execute(
        _select().where(
            Proposal.proposalCode == code,
            Proposal.proposalNumber == number,
            BLSession.visit_number == visit_number,
        )
    ).first()
    if row is None:
        raise NotFoundError(f"unknown visit {name}")
    return Visit(*row)


def visit_by_session_id(db: Session | Connection, session_id: int) -> Visit:
    row = db.execute(_select().where(BLSession.sessionId == session_id)).first()
    if row is None:
        raise NotFoundError(f"unknown session id {session_id}")
    return Visit(*row)


def visit_directory(config: SiteConfig, visit: Visit) -> Path:
    """The visit's folder from the site template; it must lie inside a data root."""
    year = visit.start_date.year if visit.start_date else ""
    try:
        text = config.visit_directory.format(
            data_root=config.data_roots[0],
            beamline=visit.beamline or "",
            year=year,
            proposal=f"{visit.proposal_code}{visit.proposal_number}",
            visit=visit.name,
        )
    except (KeyError, IndexError) as exc:
        raise InputError(f"visit_directory template has an unknown field {exc}") from None
    return Path(text)
