"""``relion-zo worker`` and ``relion-zo dispatcher``: relion_zo's services, this site's settings.

``worker`` runs ``zocalo.service -s RelionWorker`` (relion_zo's worker); ``dispatcher`` runs
``zocalo.service -s RelionDispatcher`` (relion_zo's own dispatch service, which turns
``processing_recipe`` requests into recipe steps using the recipes in the zocalo
configuration's ``zocalo.recipe_directory``; see ``relion_zo.dispatcher`` for why it is not
zocalo's Dispatcher). Both are registered under ``workflows.services`` and run on
``RelionPikaTransport`` (``-t``), which survives messages without headers. Both get
``RELION_ZO_CONFIG`` and ``ZOCALO_CONFIG`` from the site file and replace this process
(``exec``), so a process supervisor (systemd, supervisord) sees and signals the service itself.
Start as many workers, on as many machines, as you like: they share the queue.
"""

from __future__ import annotations

import argparse
import os
import shutil

from relion_zo.cli.common import add_config_option, guarded
from relion_zo.config import load_config
from relion_zo.errors import InputError
from relion_zo.transport import TRANSPORT_NAME


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
        argv_out = [command, "-s", service, "-t", TRANSPORT_NAME]
        argv_out += ["-v"] if args.verbose else []
        os.execve(command, argv_out, env)
        return 0  # not reached

    return guarded(body)


def main(argv: list[str] | None = None) -> int:
    return _exec_service("relion-zo worker", "RelionWorker", argv)


def dispatcher_main(argv: list[str] | None = None) -> int:
    return _exec_service("relion-zo dispatcher", "RelionDispatcher", argv)
