"""``relion-zo run PJID``: run a processing job in the foreground, with no broker.

The beamline scientist's path: the same work as the zocalo wrapper. On a terminal it shows
per-stage counts; otherwise it logs plain lines. Ctrl-C stops RELION and records the stop.
Exit status: 0 success or stopped, 1 failure or bad input, 3 the job already had a program.
"""

from __future__ import annotations

import sys

from relion_zo.cli.common import (
    Parser,
    add_config_option,
    guarded,
    identifier,
    open_site,
    setup_logging,
)
from relion_zo.manager import JobManager
from relion_zo.runner import environment_text, run_job_until_signalled

EXIT_CODES = {"success": 0, "stopped": 0, "failure": 1, "skipped": 3}


def main(argv: list[str] | None = None) -> int:
    return run_command("relion-zo run", __doc__, argv)


def run_command(prog: str, doc: str, argv: list[str] | None, *, resume: bool = False) -> int:
    """``run`` and ``resume``: one job in the foreground. ``resume`` first makes the job a new
    program and carries on in its own project."""
    parser = Parser(prog=prog, description=doc)
    add_config_option(parser)
    parser.add_argument("job", type=identifier, help="the processing job id")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    def body() -> int:
        config, engine = open_site(args, "processing")
        tty = sys.stdout.isatty()
        if not tty:
            setup_logging(args.verbose)

        def show(progress) -> None:
            if tty:
                sys.stdout.write(f"\rjob {args.job}: pass {progress.passes}: {progress.text()}   ")
                sys.stdout.flush()

        command = f"{prog} {args.job}"
        try:
            program = None
            if resume:
                program = JobManager(engine, config).new_program(
                    args.job, command_line=command, environment=environment_text())
            outcome = run_job_until_signalled(
                args.job, engine=engine, config=config, on_progress=show,
                command_line=command, program_id=program, resume=resume,
            )
        finally:
            engine.dispose()
        if tty:
            sys.stdout.write("\n")
        print(f"processing job {args.job}: {outcome.state}: {outcome.message}")
        if outcome.project:
            print(f"project: {outcome.project}")
        return EXIT_CODES[outcome.state]

    return guarded(body)
