"""``relion-zo stop``: SynchWeb's Stop button for a job or a data collection's active job.

By default it sends the ``relion-stop`` recipe through the broker (what SynchWeb did); the
worker that receives it records a stop request in ISPyB, and the job's wrapper, wherever it
runs, sees it within a second, ends RELION and records ``stopped``. A job that is only submitted
or queued is closed at once so that no wrapper starts it. ``--local`` records the request from
this shell without the broker, with the web side's grants (a ProcessingJobParameter row): a
running job stops within a second, and a worker closes a submitted or queued one at its next
round (``docs/ispyb.md``). ``--wait`` waits until the job's status is final.
"""

from __future__ import annotations

import argparse

from relion_zo import broker, control
from relion_zo.cli.common import (
    Parser,
    add_config_option,
    guarded,
    identifier,
    open_site,
    who,
)
from relion_zo.db import session_scope
from relion_zo.errors import InputError
from relion_zo.manager import JobManager
from relion_zo.status import FINAL_STATES


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relion-zo stop", description=__doc__)
    add_config_option(parser)
    parser.add_argument("job", nargs="?", type=identifier, help="the processing job id")
    parser.add_argument("--dcid", type=identifier, help="stop this data collection's active job")
    parser.add_argument("--local", action="store_true", help="act here, not through the broker")
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help="wait up to this long for the final status")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if (args.job is None) == (args.dcid is None):
            raise InputError("give a job id or --dcid")
        config, engine = open_site(args, "web")
        try:
            with session_scope(engine) as db:
                if args.dcid is not None:
                    active = control.active_job_of(db, config, args.dcid)
                    if active is None:
                        print(f"data collection {args.dcid} has no active job")
                        return 1
                    pjid = active.processing_job_id
                else:
                    pjid = args.job
                if args.local:
                    result = JobManager(engine, config).request_stop(
                        pjid, f"relion-zo stop ({who()})", close=False)
                    print(result.message)
                    stopped = result.action != "final"
                elif (state := control.job_state(db, config, pjid)).state in FINAL_STATES:
                    print(f"processing job {pjid} is already {state.state}")
                    stopped = False
                else:
                    db.rollback()
                    broker.send(config.zocalo_path(),
                                [broker.recipe_message(broker.STOP_RECIPE, pjid)])
                    print(f"processing job {pjid}: stop sent")
                    stopped = True
                if stopped and args.wait:
                    final = control.wait_until_final(db, config, pjid, args.wait)
                    print(f"processing job {pjid}: {final.state}")
        finally:
            engine.dispose()
        return 0 if stopped else 1

    return guarded(body)
