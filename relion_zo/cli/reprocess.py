"""``relion-zo reprocess``: a new processing job from an old one's parameters.

``relion-zo reprocess PJID [--set key=value ...]`` writes a new ProcessingJob for the same data
collection with the old job's parameters plus the overrides, checked like any Start (and
refused the same way while the data collection has an active job), then sends it to zocalo.

``relion-zo reprocess --from-file FILE [--set ...]`` does that for every job id in FILE (one per
line, ``#`` comments allowed). It prints progress, reports and skips past an id that fails, and
records each id it has done in ``FILE.done`` (``old_id new_id``): running it again on the same
file does only what is left. Exit status 1 when any id failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relion_zo import control
from relion_zo.cli.common import (
    Parser,
    add_config_option,
    check_broker,
    guarded,
    identifier,
    open_site,
    send_job,
)
from relion_zo.db import session_scope
from relion_zo.errors import InputError, RelionZoError
from relion_zo.parameters import pairs_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relion-zo reprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(parser)
    parser.add_argument("job", nargs="?", type=identifier, help="the processing job to reprocess")
    parser.add_argument("--from-file", metavar="FILE", help="a file of job ids")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a relion_it option to change; repeat for more")
    parser.add_argument("--no-send", action="store_true", help="write the jobs only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if (args.job is None) == (args.from_file is None):
            raise InputError("give a job id or --from-file FILE")
        overrides = pairs_from_args(args.set)
        config, engine = open_site(args, "web")
        zocalo = None if args.no_send else config.zocalo_path()
        if zocalo is not None:
            check_broker(zocalo)  # before anything is written
        try:
            with session_scope(engine) as db:
                if args.job is not None:
                    result = control.reprocess(db, config, args.job, overrides)
                    _send(zocalo, result.processing_job_id)
                    print(f"processing job {result.processing_job_id} submitted: reprocessing "
                          f"of job {args.job} (data collection {result.data_collection_id})")
                    return 0
                return _bulk(db, config, Path(args.from_file), overrides, zocalo)
        finally:
            engine.dispose()

    return guarded(body)


def _send(zocalo, pjid: int) -> None:
    if zocalo is not None:
        send_job(zocalo, pjid)


def _bulk(db, config, path: Path, overrides, zocalo) -> int:
    ids = control.read_job_ids(path)
    ledger = control.Ledger(path.with_name(path.name + ".done"))
    try:
        return _bulk_jobs(db, config, ids, ledger, overrides, zocalo)
    finally:
        ledger.close()


def _bulk_jobs(db, config, ids: list[int], ledger, overrides, zocalo) -> int:
    failed = 0
    for number, old in enumerate(ids, 1):
        where = f"[{number}/{len(ids)}] job {old}"
        if old in ledger.done:
            print(f"{where}: done before, as job {ledger.done[old]}")
            continue
        try:
            result = control.reprocess(db, config, old, overrides)
        except RelionZoError as exc:
            failed += 1
            print(f"{where}: failed: {exc}")
            continue
        ledger.record(old, result.processing_job_id)  # written: never written twice
        try:
            _send(zocalo, result.processing_job_id)
        except RelionZoError as exc:
            failed += 1
            print(f"{where}: job {result.processing_job_id} written but not sent: {exc}")
            continue
        print(f"{where}: submitted as job {result.processing_job_id}")
    print(f"{len(ids) - failed} of {len(ids)} done; ledger {ledger.path}")
    return 1 if failed else 0
