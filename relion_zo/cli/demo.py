"""``relion-zo demo``: the main job end to end on the local stack.

Brings the local MariaDB and RabbitMQ up, starts relion_zo's dispatcher and a relion_zo worker,
seeds a demo visit with synthetic movies and presses Start for it: the message goes through
RabbitMQ to the worker, which runs the job with real RELION (relion_it's two passes)
while the demo follows the job's state in ISPyB, then prints the visit's status table, the
job's results in numbers and the path of its report (``relion-zo report``), and stops the
services. ``--foreground`` runs the job in this process instead (``relion-zo run``,
no broker); ``--slurm`` has RELION send its jobs to the local stack's Slurm (docs/slurm.md).
Run it again and it processes the same movies as a new job.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from relion_zo import broker, control, jobs
from relion_zo.cli import report as report_cli
from relion_zo.cli import run as run_cli
from relion_zo.cli import status as status_cli
from relion_zo.cli.common import Parser, guarded
from relion_zo.cli.demo_data import add_demo_options, seed
from relion_zo.config import load_config
from relion_zo.db import make_engine, session_scope
from relion_zo.devstack import stack
from relion_zo.devstack.services import LocalServices
from relion_zo.errors import ActiveJobError


def start_or_resume(demo) -> int:
    """Start a job for the demo's movies; a job that was started but never run is reused."""
    config = load_config(demo.config_path)
    parameters = yaml.safe_load(Path(demo.parameters_path).read_text())
    engine = make_engine(config.credentials_path("web"))
    try:
        with session_scope(engine) as db:
            try:
                result = jobs.start_job(
                    db, config, parameters, visit=demo.visit,
                    image_directory=demo.image_directory, file_template=demo.file_template,
                    display_name="relion_zo demo",
                )
            except ActiveJobError as exc:
                if exc.state != "submitted":
                    raise
                print(f"processing job {exc.processing_job_id} was started before and never "
                      "run; running it now")
                return exc.processing_job_id
    finally:
        engine.dispose()
    print(f"processing job {result.processing_job_id} submitted for data collection "
          f"{result.data_collection_id} ({result.movies} movies)")
    return result.processing_job_id


def follow(config_path: Path, pjid: int, limit: float = 600) -> str:
    """Print the job's state from ISPyB as it changes, until it is final."""
    config = load_config(config_path)
    engine = make_engine(config.credentials_path())
    shown = None
    deadline = time.monotonic() + limit
    try:
        with session_scope(engine) as db:
            while True:
                state = control.job_state(db, config, pjid)
                db.rollback()
                line = f"job {pjid}: {state.state}" + (
                    f" ({state.message})" if state.message else "")
                if line != shown:
                    print(line, flush=True)
                    shown = line
                if state.state in ("success", "stopped", "failure", "lost"):
                    return state.state
                if time.monotonic() > deadline:
                    return state.state
                time.sleep(0.5)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo demo", description=__doc__)
    add_demo_options(parser)
    parser.add_argument("--foreground", action="store_true",
                        help="run the job in this process, without the broker")
    args = parser.parse_args(argv)

    def body() -> int:
        settings = stack.StackSettings.from_env(Path(args.stack) if args.stack else None)
        print("== local stack", flush=True)
        stack.up(settings)
        print(f"MariaDB, RabbitMQ and Slurm are up in {settings.root}")
        print("== demo visit")
        demo = seed(args)
        print(f"visit {demo.visit}: {demo.image_directory}/{demo.file_template}")
        config = ["--config", str(demo.config_path)]
        if args.foreground:
            print("== Start")
            pjid = start_or_resume(demo)
            print("== run in the foreground (RELION: relion_it's two passes)", flush=True)
            code = run_cli.main(config + [str(pjid)])
        else:
            logs = Path(args.root) / "logs"
            with LocalServices(demo.config_path, settings.zocalo_config_path, logs) as services:
                print(f"== relion_zo's dispatcher and a worker (logs in {logs})", flush=True)
                services.dispatcher()
                services.worker()
                print("== Start (ISPyB rows, then a message to processing_recipe)")
                pjid = start_or_resume(demo)
                broker.send(settings.zocalo_config_path,
                            [broker.start_message(pjid)])
                print("== the worker runs RELION: relion_it's two passes", flush=True)
                final = follow(demo.config_path, pjid)
            code = 0 if final == "success" else 1
        print("== status")
        status_code = status_cli.main(config + ["--visit", demo.visit])
        print(f"== job {pjid}'s results in ISPyB (relion-zo status --job {pjid})")
        status_code = status_cli.main(config + ["--job", str(pjid)]) or status_code
        print(f"== its report (relion-zo report {pjid}), to open in a browser")
        report_code = report_cli.main(config + [str(pjid)])
        return code or status_code or report_code

    return guarded(body)
