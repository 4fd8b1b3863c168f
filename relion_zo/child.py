"""The process a worker starts for one run: ``python -m relion_zo.child PJID PROGRAM PARENT``.

It asks the kernel for SIGTERM when its parent (the worker) dies, so a worker that is killed
does not leave RELION running unsupervised: the run stops its pipeliners and records a failure
that names the dead worker. The site file comes from ``RELION_ZO_CONFIG``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str] | None = None) -> int:
    pjid, program, parent = (int(a) for a in (argv or sys.argv[1:]))
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s job {pjid} %(levelname)s %(name)s: %(message)s")
    die_with_parent()
    from relion_zo.config import load_config
    from relion_zo.db import make_engine
    from relion_zo.runner import run_job_until_signalled

    config = load_config()
    engine = make_engine(config.credentials_path())
    try:
        if os.getppid() != parent:  # the worker died before the request above took effect
            from sqlalchemy.orm import Session

            from relion_zo import programs

            with Session(engine) as db:
                programs.finish(db, program, success=False,
                                message=f"the worker (pid {parent}) died before the run started")
            return 1
        outcome = run_job_until_signalled(
            pjid, engine=engine, config=config, program_id=program, parent_pid=parent,
            command_line=f"relion-zo worker (ispyb_process {pjid})",
        )
    finally:
        engine.dispose()
    logging.getLogger("relion_zo.child").info("%s: %s", outcome.state, outcome.message)
    return 0 if outcome.state in ("success", "stopped", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
