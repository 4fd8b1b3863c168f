"""``relion-zo stack up|down|status``: the local MariaDB, RabbitMQ and Slurm for the demo and
tests."""

from __future__ import annotations

import json
from pathlib import Path

from relion_zo.cli.common import Parser, guarded
from relion_zo.devstack import stack

SERVERS = ("mariadb", "rabbitmq", *stack.SLURM_DAEMONS)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="relion-zo stack", description=__doc__)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--root", help="the stack's private folder (default ./.stack)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)

    def body() -> int:
        settings = stack.StackSettings.from_env(Path(args.root) if args.root else None)
        if args.action == "down":
            stack.down(settings)
            print("local stack stopped")
            return 0
        info = stack.up(settings) if args.action == "up" else stack.status(settings)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        for name in SERVERS:
            server = info[name]
            state = f"running (pid {server['pid']})" if server["running"] else "stopped"
            where = f"127.0.0.1:{server['port']}" if "port" in server else server["socket"]
            node = f"  node {server['node']}" if "node" in server else ""
            print(f"{name:9} {where}  {state}{node}")
        print(f"processing side's ISPyB credentials: {info['processing_credentials']}")
        print(f"web side's ISPyB credentials:        {info['web_credentials']}")
        print(f"export ZOCALO_CONFIG={info['zocalo_config']}")
        for name, value in stack.slurm_environment(settings).items():
            print(f"export {name}={value}")
        return 0 if args.action == "up" or all(info[n]["running"] for n in SERVERS) else 3

    return guarded(body)
