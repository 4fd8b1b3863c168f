"""``relion-zo stop PJID``: stop a running job by removing its ``RUNNING_RELION_IT`` file.

The file lives in the job's project directory on the shared filesystem, so the stop reaches
the wrapper wherever it runs; the wrapper ends RELION's pipeliners within a second or two and
records the final status ``stopped``.
"""

from __future__ import annotations

import argparse

from relion_zo import jobs, project
from relion_zo.cli.common import add_config_option, guarded, open_site
from relion_zo.db import session_scope
from relion_zo.relion_it.pipeliner import RUNNING_RELION_IT


def stop_job(db, config, processing_job_id: int) -> tuple[bool, str]:
    spec = jobs.load_job(db, config, processing_job_id)
    folder = project.project_directory(config, spec.visit_directory, processing_job_id)
    running = folder / RUNNING_RELION_IT
    try:
        running.unlink()
    except FileNotFoundError:
        return False, f"processing job {processing_job_id} is not running ({running} is absent)"
    return True, f"processing job {processing_job_id}: removed {running}; the job will stop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relion-zo stop", description=__doc__)
    add_config_option(parser)
    parser.add_argument("job", type=int, help="the processing job id")
    args = parser.parse_args(argv)

    def body() -> int:
        config, engine = open_site(args)
        try:
            with session_scope(engine) as db:
                stopped, message = stop_job(db, config, args.job)
        finally:
            engine.dispose()
        print(message)
        return 0 if stopped else 1

    return guarded(body)
