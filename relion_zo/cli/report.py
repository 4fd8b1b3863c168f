"""``relion-zo report``: a processing job as one self-contained HTML page (plots and class
averages embedded), made from ISPyB and the job's project; made again at any time."""

from __future__ import annotations

import argparse
from pathlib import Path

from relion_zo import report as report_mod
from relion_zo.cli.common import Parser, add_config_option, guarded, identifier, open_site
from relion_zo.db import session_scope
from relion_zo.errors import InputError, NotFoundError
from relion_zo.paths import open_new, replace_with


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relion-zo report", description=__doc__)
    add_config_option(parser)
    parser.add_argument("job", type=identifier, help="a processing job id")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="a new file for the page (default: relion_zo_report.html in the "
                        "job's project, replaced each time)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config, engine = open_site(args, "processing")
        try:
            with session_scope(engine) as db:
                data = report_mod.load(db, args.job, config.stale_seconds, config.data_roots)
        finally:
            engine.dispose()
        if data is None:
            raise NotFoundError(f"unknown processing job {args.job}")
        page = report_mod.render(data)
        if args.output is not None:
            with open_new(args.output, "report") as handle:
                handle.write(page)
            target = args.output
        elif data.project is not None and data.project.is_dir():
            target = replace_with(data.project / report_mod.REPORT_NAME, page, "report")
        else:
            raise InputError(f"job {args.job} has no project here to write its report into; "
                             "give --output FILE")
        print(target)
        return 0

    return guarded(body)
