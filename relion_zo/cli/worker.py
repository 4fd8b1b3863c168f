"""``relion-zo worker`` and ``relion-zo dispatcher``: zocalo services with this site's settings.

``worker`` runs ``zocalo.service -s RelionWorker`` (relion_zo's worker, registered under
``workflows.services``); ``dispatcher`` runs zocalo's own ``Dispatcher``, which turns
``processing_recipe`` messages into recipe steps using the recipes in its
``zocalo.recipe_directory`` and relion_zo's filter. Both get ``RELION_ZO_CONFIG`` and
``ZOCALO_CONFIG`` from the site file and replace this process (``exec``), so a process
supervisor (systemd, supervisord) sees and signals the service itself. Start as many workers,
on as many machines, as you like: they share the queue.
"""

from __future__ import annotations

import argparse
import os
import shutil

from relion_zo.cli.common import add_config_option, guarded
from relion_zo.config import load_config
from relion_zo.errors import InputError


def _exec_service(prog: str, service: str, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_config_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    def body() -> int:
        config = load_config(args.config)
        zocalo = config.zocalo_path()
        command = shutil.which("zocalo.service")
        if command is None:
            raise InputError("zocalo.service is not installed (pip install zocalo)")
        env = dict(os.environ)
        if args.config:
            env["RELION_ZO_CONFIG"] = os.path.abspath(args.config)
        env["ZOCALO_CONFIG"] = str(zocalo)
        argv_out = [command, "-s", service] + (["-v"] if args.verbose else [])
        os.execve(command, argv_out, env)
        return 0  # not reached

    return guarded(body)


def main(argv: list[str] | None = None) -> int:
    return _exec_service("relion-zo worker", "RelionWorker", argv)


def dispatcher_main(argv: list[str] | None = None) -> int:
    return _exec_service("relion-zo dispatcher", "Dispatcher", argv)
