"""``relion-zo demo``: the main job end to end on the local stack.

Brings the local MariaDB and RabbitMQ up, seeds a demo visit with synthetic movies, presses
Start for it, runs the job with real RELION (Import and motion correction) and prints the
visit's status table. Run it again and it processes the same movies as a new job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from relion_zo import jobs, stack
from relion_zo.cli import run as run_cli
from relion_zo.cli import status as status_cli
from relion_zo.cli.common import guarded
from relion_zo.cli.demo_data import add_demo_options, seed
from relion_zo.config import load_config
from relion_zo.db import make_engine, session_scope
from relion_zo.errors import ActiveJobError


def start_or_resume(demo) -> int:
    """Start a job for the demo's movies; a job that was started but never run is reused."""
    config = load_config(demo.config_path)
    parameters = yaml.safe_load(Path(demo.parameters_path).read_text())
    engine = make_engine(config.credentials_path())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relion-zo demo", description=__doc__)
    add_demo_options(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        settings = stack.StackSettings.from_env(Path(args.stack) if args.stack else None)
        print("== local stack", flush=True)
        stack.up(settings)
        print(f"MariaDB and RabbitMQ are up in {settings.root}")
        print("== demo visit")
        demo = seed(args)
        print(f"visit {demo.visit}: {demo.image_directory}/{demo.file_template}")
        print("== Start")
        pjid = start_or_resume(demo)
        config = ["--config", str(demo.config_path)]
        print("== run (RELION Import and motion correction)", flush=True)
        run_code = run_cli.main(config + [str(pjid)])
        print("== status")
        status_code = status_cli.main(config + ["--visit", demo.visit])
        return run_code or status_code

    return guarded(body)
