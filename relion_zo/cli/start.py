"""``relion-zo start``: SynchWeb's Start. Writes a processing job for a folder of movies, then
sends ``{"recipes": ["relion"], "parameters": {"ispyb_process": PJID}}`` to zocalo's
``processing_recipe`` queue (what ``zocalo.go -r relion -p PJID`` sends). ``--no-send`` only
writes the job (run it with ``relion-zo run PJID``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from relion_zo import jobs
from relion_zo.cli.common import (
    Parser,
    add_config_option,
    check_broker,
    guarded,
    identifier,
    open_site,
    send_job,
)
from relion_zo.config import UniqueKeyLoader, yaml_reason
from relion_zo.db import session_scope
from relion_zo.errors import InputError
from relion_zo.parameters import pairs_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relion-zo start", description=__doc__)
    add_config_option(parser)
    where = parser.add_argument_group("what to process (a data collection id, or all three)")
    where.add_argument("--dcid", type=identifier, help="an existing DataCollection id")
    where.add_argument("--visit", help="visit name, e.g. cm12345-1")
    where.add_argument("--image-directory", help="absolute path of the raw movie folder")
    where.add_argument("--file-template", help="glob of movies inside it, e.g. '*.tiff'")
    parser.add_argument(
        "--param", "-p", action="append", default=[], metavar="KEY=VALUE",
        help="a relion_it option; repeat for more",
    )
    parser.add_argument(
        "--params-file", metavar="FILE", help="YAML or JSON mapping of relion_it options"
    )
    parser.add_argument("--display-name", help="ProcessingJob.displayName")
    parser.add_argument("--comments", help="ProcessingJob.comments")
    parser.add_argument("--no-send", action="store_true",
                        help="write the job only; do not send it to zocalo")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def read_params_file(path: str) -> list[tuple[str, object]]:
    """A YAML or JSON mapping of option names; a key given twice is an error."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except OSError as exc:
        raise InputError(f"cannot read parameters file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"parameters file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise InputError(f"parameters file {path} is not YAML or JSON: {yaml_reason(exc)}"
                         ) from None
    if not isinstance(data, dict):
        raise InputError(f"parameters file {path} must hold a mapping of option names")
    return list(data.items())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        pairs = read_params_file(args.params_file) if args.params_file else []
        pairs += pairs_from_args(args.param)
        config, engine = open_site(args, "web")
        zocalo = None if args.no_send else config.zocalo_path()
        if zocalo is not None:  # a broker that cannot be reached: say so before writing
            check_broker(zocalo)
        try:
            with session_scope(engine) as db:
                result = jobs.start_job(
                    db,
                    config,
                    pairs,
                    visit=args.visit,
                    image_directory=args.image_directory,
                    file_template=args.file_template,
                    data_collection_id=args.dcid,
                    display_name=args.display_name,
                    comments=args.comments,
                    resend_submitted=zocalo is not None,
                )
        finally:
            engine.dispose()
        if zocalo is not None:
            send_job(zocalo, result.processing_job_id)
        if args.json:
            print(json.dumps({**result.__dict__, "sent": zocalo is not None}))
        else:
            what = ("was submitted before and never picked up; sent again" if result.resend
                    else f"submitted for data collection {result.data_collection_id} "
                    f"({result.movies} movies so far)"
                    + ("" if zocalo is None else "; sent to zocalo"))
            print(f"processing job {result.processing_job_id} {what}")
        return 0

    return guarded(body)
