"""``relion-zo demo``: the main job end to end on the local stack.

Brings the local MariaDB and RabbitMQ up, seeds a demo visit with synthetic movies, presses
Start for it and prints the visit's status table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relion_zo import stack
from relion_zo.cli import start as start_cli
from relion_zo.cli import status as status_cli
from relion_zo.cli.common import guarded
from relion_zo.cli.demo_data import add_demo_options, seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relion-zo demo", description=__doc__)
    add_demo_options(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        settings = stack.StackSettings.from_env(Path(args.stack) if args.stack else None)
        print("== local stack")
        stack.up(settings)
        print(f"MariaDB and RabbitMQ are up in {settings.root}")
        print("== demo visit")
        demo = seed(args)
        print(f"visit {demo.visit}: {demo.image_directory}/{demo.file_template}")
        print("== Start")
        config = ["--config", str(demo.config_path)]
        code = start_cli.main(
            config
            + ["--visit", demo.visit, "--image-directory", str(demo.image_directory)]
            + ["--file-template", demo.file_template, "--params-file", str(demo.parameters_path)]
        )
        print("== status")
        status_code = status_cli.main(config + ["--visit", demo.visit])
        return code or status_code

    return guarded(body)
