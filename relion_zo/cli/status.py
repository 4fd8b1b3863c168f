"""``relion-zo status``: job states by job id, data collection or visit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ispyb.sqlalchemy import DataCollection, ProcessingJob
from sqlalchemy import select

from relion_zo import status as status_mod
from relion_zo import summary as summary_mod
from relion_zo.cli.common import Parser, add_config_option, guarded, identifier, open_site
from relion_zo.db import session_scope
from relion_zo.errors import InputError, NotFoundError
from relion_zo.paths import checked_absolute, checked_relative, confine
from relion_zo.visits import find_visit

COLUMNS = ("job", "dcid", "state", "started", "heartbeat", "message")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relion-zo status", description=__doc__)
    add_config_option(parser)
    parser.add_argument("job", nargs="?", type=identifier, help="a processing job id")
    parser.add_argument("--job", dest="summary_job", type=identifier, metavar="N",
                        help="a processing job id, with its results summarised: movies, "
                        "motion, defocus, CTF resolution, particles, classes, lag")
    parser.add_argument("--dcid", type=identifier, help="a data collection id")
    parser.add_argument("--visit", help="a visit name, e.g. cm12345-1")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def format_table(rows: list[status_mod.JobStatus]) -> str:
    cells = [
        (
            str(r.processing_job_id),
            str(r.data_collection_id or "-"),
            r.state,
            _time(r.start_time),
            _time(r.heartbeat),
            r.message or "",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _movies(db, config, pjid: int) -> tuple[Path | None, str | None]:
    """The job's raw folder and file template, when the folder is inside the data roots."""
    row = db.execute(select(DataCollection.imageDirectory, DataCollection.fileTemplate)
                     .join(ProcessingJob, ProcessingJob.dataCollectionId
                           == DataCollection.dataCollectionId)
                     .where(ProcessingJob.processingJobId == pjid)).first()
    if row is None or not row.imageDirectory or not row.fileTemplate:
        return None, None
    try:
        folder = confine(checked_absolute(row.imageDirectory, "image directory"),
                         config.data_roots, "image directory")
        checked_relative(row.fileTemplate, "file template")
    except InputError:
        return None, None
    return folder, row.fileTemplate


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if sum(x is not None for x in (args.job, args.summary_job, args.dcid,
                                       args.visit)) != 1:
            raise InputError("give exactly one of: a job id, --job, --dcid or --visit")
        if args.summary_job is not None:
            args.job = args.summary_job
        config, engine = open_site(args, "processing")
        summary = None
        try:
            with session_scope(engine) as db:
                session_id = find_visit(db, args.visit).session_id if args.visit else None
                rows = status_mod.query_states(
                    db,
                    stale_seconds=config.stale_seconds,
                    processing_job_id=args.job,
                    data_collection_id=args.dcid,
                    session_id=session_id,
                )
                if args.summary_job is not None and rows:
                    folder, pattern = _movies(db, config, args.job)
                    summary = summary_mod.job_summary(db, args.job, folder, pattern)
        finally:
            engine.dispose()
        if args.job is not None and not rows:
            raise NotFoundError(f"unknown processing job {args.job}")
        if args.json:
            data = [r.as_json() for r in rows]
            if summary is not None:
                data[0]["results"] = summary.as_json()
            print(json.dumps(data, indent=2))
        elif rows:
            print(format_table(rows))
            if summary is not None:
                print()
                print(summary.text())
        else:
            print("no relion processing jobs")
        return 0

    return guarded(body)
