"""``relion-zo resume PJID``: carry on a failed, stopped or lost job in its own project.

A new AutoProcProgram is made for the job (ISPyB's final statuses are written once, so the old
program keeps its outcome), and the run continues in the job's own RELION project: the jobs in
``RELION_IT_SUBMITTED_JOBS`` are reused and RELION skips the movies it has already processed, so
nothing finished is done again. It runs in the foreground, like ``relion-zo run``; a job
interrupted by a shutdown says so in its message. Exit status as ``run``.
"""

from __future__ import annotations

from relion_zo.cli.common import (
    Parser,
    add_config_option,
    guarded,
    identifier,
    open_site,
    setup_logging,
)
from relion_zo.cli.run import EXIT_CODES


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo resume", description=__doc__)
    add_config_option(parser)
    parser.add_argument("job", type=identifier, help="the processing job id")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    def body() -> int:
        from relion_zo.manager import JobManager
        from relion_zo.runner import environment_text, run_job_until_signalled

        config, engine = open_site(args)
        setup_logging(args.verbose)
        command = f"relion-zo resume {args.job}"
        try:
            program = JobManager(engine, config).new_program(
                args.job, command_line=command, environment=environment_text())
            outcome = run_job_until_signalled(
                args.job, engine=engine, config=config, program_id=program, resume=True,
                command_line=command)
        finally:
            engine.dispose()
        print(f"processing job {args.job}: {outcome.state}: {outcome.message}")
        return EXIT_CODES[outcome.state]

    return guarded(body)
