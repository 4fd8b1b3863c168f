"""``relion-zo resume PJID``: carry on a failed, stopped or lost job in its own project.

A new AutoProcProgram is made for the job (ISPyB's final statuses are written once, so the old
program keeps its outcome), and the run continues in the job's own RELION project: the jobs in
``RELION_IT_SUBMITTED_JOBS`` are reused and RELION skips the movies it has already processed, so
nothing finished is done again. It runs in the foreground, like ``relion-zo run``; a job
interrupted by a shutdown says so in its message. Exit status as ``run``.
"""

from __future__ import annotations

from relion_zo.cli.run import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("relion-zo resume", __doc__, argv, resume=True)
