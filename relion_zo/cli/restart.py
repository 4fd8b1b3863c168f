"""``relion-zo restart --dcid N``: SynchWeb's "Stop and restart" button.

Stops the data collection's active job (through the broker, or ``--local``), waits until its
status is final, then writes a new job with the same parameters plus any ``--set`` overrides and
sends it. With no active job it restarts the data collection's newest job.
"""

from __future__ import annotations

from relion_zo import broker, control
from relion_zo.cli.common import (
    Parser,
    add_config_option,
    check_broker,
    guarded,
    identifier,
    open_site,
    send_job,
    who,
)
from relion_zo.db import session_scope
from relion_zo.manager import JobManager
from relion_zo.parameters import pairs_from_args


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo restart", description=__doc__)
    add_config_option(parser)
    parser.add_argument("--dcid", type=identifier, required=True, help="the data collection")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a relion_it option to change; repeat for more")
    parser.add_argument("--local", action="store_true",
                        help="stop here instead of through the broker, and do not send")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the old job to stop (120)")
    args = parser.parse_args(argv)

    def body() -> int:
        overrides = pairs_from_args(args.set)
        config, engine = open_site(args, "web")
        zocalo = None if args.local else config.zocalo_path()
        if zocalo is not None:
            check_broker(zocalo)  # before anything is stopped or written
        try:
            with session_scope(engine) as db:
                active = control.active_job_of(db, config, args.dcid)
                if active is None:
                    old = control.newest_job_of(db, config, args.dcid).processing_job_id
                    print(f"data collection {args.dcid} has no active job; restarting job {old}")
                else:
                    old = active.processing_job_id
                    if zocalo is None:
                        print(JobManager(engine, config).request_stop(
                            old, f"relion-zo restart ({who()})", close=False).message)
                    else:
                        broker.send(zocalo, [broker.recipe_message(broker.STOP_RECIPE, old)])
                        print(f"processing job {old}: stop sent")
                    final = control.wait_until_final(db, config, old, args.timeout)
                    print(f"processing job {old}: {final.state}")
                result = control.reprocess(db, config, old, overrides)
                if zocalo is not None:
                    send_job(zocalo, result.processing_job_id)
        finally:
            engine.dispose()
        print(f"processing job {result.processing_job_id} submitted for data collection "
              f"{args.dcid} (restart of job {old})")
        return 0

    return guarded(body)
