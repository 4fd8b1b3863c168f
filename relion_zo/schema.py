"""Which ISPyB a database is, and whether it has what relion_zo uses (docs/ispyb.md).

relion_zo reads ``AdminVar.schemaVersion`` and checks, once per engine, that every column it
reads or writes is there and visible to the user of the side at work (information_schema shows
a user only the columns it holds a privilege on): a missing column or grant is one clear line
naming it, before a job is touched. relion_zo names every column it selects, so a column that
only newer schemas have (``AutoProcProgram.jobUuid``, in the ORM but not in 5.0.0) is never
asked for.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref

from sqlalchemy import Engine, bindparam, text

from relion_zo.errors import RelionZoError

log = logging.getLogger(__name__)

# Checked here: 5.0.0 (the tables without AutoProcProgram.jobUuid, tests/test_ispyb.py) and
# 5.2.0 (what the ispyb package's ORM makes: the local stack). Other 5.x: a warning, then the
# column check decides.
KNOWN_VERSIONS = ("5.0.0", "5.1.0", "5.2.0")
MAJOR = 5

_PROCESSING = {
    "AdminVar": ("name", "value"),
    "ProcessingJob": ("processingJobId", "dataCollectionId", "recipe", "recordTimestamp"),
    "ProcessingJobParameter": ("processingJobParameterId", "processingJobId", "parameterKey",
                               "parameterValue"),
    "AutoProcProgram": ("autoProcProgramId", "processingJobId", "processingPrograms",
                        "processingCommandLine", "processingEnvironment", "processingStatus",
                        "processingMessage", "processingStartTime", "processingEndTime",
                        "recordTimeStamp"),
    "AutoProcProgramAttachment": ("autoProcProgramId", "fileType", "fileName", "filePath",
                                  "importanceRank", "recordTimeStamp"),
    "DataCollection": ("dataCollectionId", "SESSIONID", "imageDirectory", "fileTemplate"),
    "BLSession": ("sessionId", "proposalId", "visit_number", "beamLineName", "startDate"),
    "Proposal": ("proposalId", "proposalCode", "proposalNumber"),
}
_WEB = {
    **{table: columns for table, columns in _PROCESSING.items()
       if table != "AutoProcProgramAttachment"},
    "ProcessingJob": _PROCESSING["ProcessingJob"] + ("displayName", "comments", "automatic"),
    "DataCollectionGroup": ("dataCollectionGroupId", "sessionId"),
    "ProcessingJobImageSweep": ("processingJobId", "dataCollectionId", "startImage",
                                "endImage"),
}
NEEDED = {"web": _WEB, "processing": _PROCESSING}
MESSAGE_PROCEDURE = "upsert_processing_program_message"


class SchemaError(RelionZoError):
    """The database lacks a column relion_zo needs, or the user may not see it."""


_checked: weakref.WeakKeyDictionary[Engine, dict[str, str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def version(conn) -> str | None:
    return conn.execute(text(
        "SELECT value FROM AdminVar WHERE name = 'schemaVersion' ORDER BY varId DESC LIMIT 1"
    )).scalar()


def known(value: str | None) -> bool:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", value or "")
    return bool(match) and int(match.group(1)) == MAJOR


def missing_columns(conn, side: str) -> list[str]:
    needed = NEEDED[side]
    rows = conn.execute(text(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :tables"
    ).bindparams(bindparam("tables", expanding=True)), {"tables": list(needed)}).all()
    present = {(table, column) for table, column in rows}
    return [f"{table}.{column}" for table, columns in needed.items() for column in columns
            if (table, column) not in present]


def has_message_procedure(conn) -> bool:
    return conn.execute(text(
        "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE() "
        "AND ROUTINE_NAME = :name"), {"name": MESSAGE_PROCEDURE}).scalar() > 0


def check(engine: Engine, side: str) -> str:
    """The schema version, after checking (once per engine and side) what ``side`` needs.
    Raises ``SchemaError`` naming the first missing columns."""
    with _lock:
        known_here = _checked.get(engine, {})
        if side in known_here:
            return known_here[side]
    with engine.connect() as conn:
        found = version(conn)
        missing = missing_columns(conn, side)
        procedure = side != "processing" or has_message_procedure(conn)
    shown = found or "unknown (no AdminVar schemaVersion)"
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SchemaError(
            f"ISPyB schema {shown}: relion_zo's {side} side needs {', '.join(missing[:3])}{more}, "
            "which this database lacks or this user may not read (docs/ispyb.md lists the "
            "grants)")
    if not known(found):
        log.warning("ISPyB schema %s: relion_zo is known to work with %s", shown,
                    ", ".join(KNOWN_VERSIONS))
    if not procedure:
        log.warning("ISPyB procedure %s is missing or not granted: failure reasons will be in "
                    "AutoProcProgram only, not in AutoProcProgramMessage", MESSAGE_PROCEDURE)
    with _lock:
        _checked.setdefault(engine, {})[side] = shown
    return shown
