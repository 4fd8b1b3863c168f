"""``relion-zo demo-data``: seed a demo visit (ISPyB rows, synthetic movies, gain, site file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from relion_zo.cli.common import Parser, guarded
from relion_zo.db import make_engine, session_scope
from relion_zo.devstack.demo import DEMO_VISIT, make_demo
from relion_zo.devstack.stack import StackSettings


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="demo", help="folder for the demo's files (./demo)")
    parser.add_argument("--stack", help="the local stack's folder (default ./.stack)")
    parser.add_argument("--visit", default=DEMO_VISIT, help=f"visit name ({DEMO_VISIT})")
    parser.add_argument("--movies", type=int, default=4, help="number of movies (4)")
    parser.add_argument("--slurm", action="store_true",
                        help="send RELION's jobs to the local stack's Slurm (docs/slurm.md)")


def seed(args: argparse.Namespace):
    settings = StackSettings.from_env(Path(args.stack) if args.stack else None)
    engine = make_engine(settings.credentials_path)
    try:
        with session_scope(engine) as db:
            return make_demo(
                db,
                Path(args.root),
                settings.processing_credentials_path.resolve(),
                settings.zocalo_config_path.resolve(),
                web_credentials=settings.web_credentials_path.resolve(),
                visit=args.visit,
                movies=args.movies,
                slurm_conf=settings.slurm_conf_path.resolve() if args.slurm else None,
            )
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo demo-data", description=__doc__)
    add_demo_options(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        demo = seed(args)
        print(f"visit {demo.visit} (session {demo.session_id})")
        print(f"site file:   {demo.config_path}")
        print(f"movies:      {demo.image_directory}/{demo.file_template}")
        print(f"parameters:  {demo.parameters_path}")
        print(
            "start with:  relion-zo start --config "
            f"{demo.config_path} --visit {demo.visit} --image-directory {demo.image_directory} "
            f"--file-template '{demo.file_template}' --params-file {demo.parameters_path}"
        )
        return 0

    return guarded(body)
