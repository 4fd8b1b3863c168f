"""``relion-zo reap``: record a failure for every job whose wrapper stopped beating.

A wrapper killed with SIGKILL, or on a machine that died, cannot write its final status; its
job shows as ``lost`` once its heartbeat is older than ``heartbeat_seconds x
stale_heartbeats``. Reaping closes such jobs (status 0, ``Lost: no heartbeat since ...`` and an
ERROR message), so their data collections can be started again, and ends what the wrapper left
running when it ran on this machine. A wrapper still alive on this machine is left alone, and
so is a job that beats again in the meantime; a live wrapper elsewhere that finds its job
closed ends RELION itself. Workers do this by themselves; safe to run from cron anywhere.
"""

from __future__ import annotations

from relion_zo import control
from relion_zo.cli.common import Parser, add_config_option, guarded, open_site
from relion_zo.db import session_scope
from relion_zo.manager import JobManager
from relion_zo.visits import find_visit


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo reap", description=__doc__)
    add_config_option(parser)
    parser.add_argument("--visit", help="only this visit's jobs")
    args = parser.parse_args(argv)

    def body() -> int:
        config, engine = open_site(args, "processing")
        try:
            with session_scope(engine) as db:
                session_id = find_visit(db, args.visit).session_id if args.visit else None
            manager = JobManager(engine, config)
            reaped = control.reap(manager, session_id=session_id)
            rescued = control.rescue(manager)
        finally:
            engine.dispose()
        for pjid in reaped:
            print(f"processing job {pjid}: lost, recorded as failure")
        print(f"{len(reaped)} lost job(s) reaped")
        for program in rescued.never_started:
            print(f"program {program}: claimed but never started, recorded as failure")
        for pjid in rescued.failed:
            print(f"processing job {pjid}: never picked up, recorded as failure")
        for pjid in rescued.stopped:
            print(f"processing job {pjid}: asked to stop before it ran, recorded as stopped")
        return 0

    return guarded(body)
