"""The ``relion-zo`` command: one subcommand per module, each a ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

# Explicit registry: subcommand -> (module, one-line help). Modules load only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "start": ("relion_zo.cli.start", "write a processing job for a folder of movies"),
    "run": ("relion_zo.cli.run", "run a processing job in the foreground (no broker)"),
    "resume": ("relion_zo.cli.resume", "carry on a failed, stopped or lost job in its project"),
    "stop": ("relion_zo.cli.stop", "stop a job (SynchWeb's Stop), through the broker or --local"),
    "restart": ("relion_zo.cli.restart", "stop a data collection's job and start it again"),
    "reprocess": ("relion_zo.cli.reprocess", "a new job from an old one's parameters (or a list)"),
    "worker": ("relion_zo.cli.worker", "consume run and stop messages, start a wrapper per job"),
    "dispatcher": ("relion_zo.cli.worker", "turn processing_recipe requests into recipe steps"),
    "reap": ("relion_zo.cli.reap", "record a failure for jobs whose heartbeat stopped"),
    "status": ("relion_zo.cli.status", "job states by job id, data collection or visit"),
    "report": ("relion_zo.cli.report", "a job's results as one HTML page (plots, 2D classes)"),
    "stack": ("relion_zo.cli.stack", "start or stop the local MariaDB and RabbitMQ"),
    "demo-data": ("relion_zo.cli.demo_data", "seed a demo visit with synthetic movies"),
    "demo": ("relion_zo.cli.demo", "the whole demo on the local stack"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: relion-zo COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "relion-zo COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if name == "dispatcher":
            return module.dispatcher_main(rest)
        return module.main(rest)
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
