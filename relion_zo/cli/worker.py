"""``relion-zo worker`` and ``relion-zo dispatcher``: relion_zo's services, this site's settings.

``worker`` consumes the ``relion`` and ``relion.stop`` queues and starts a wrapper process per
job (``relion_zo.worker``); ``dispatcher`` turns ``processing_recipe`` requests into recipe
steps with the recipes in the zocalo configuration's ``zocalo.recipe_directory`` (default:
relion_zo's own; ``relion_zo.dispatcher`` says why it is not zocalo's Dispatcher). Each runs in
this one process, the one a service manager (systemd, supervisord) starts and signals: SIGTERM
or SIGINT ends it cleanly, and killing it leaves no consumer behind. Both come back by
themselves after a RabbitMQ restart. Start as many workers, on as many machines, as you like:
they share the queue.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading

from relion_zo.cli.common import Parser, add_config_option, guarded, setup_logging

log = logging.getLogger(__name__)


def _serve(prog: str, build, argv: list[str] | None) -> int:
    parser = Parser(prog=prog, description=__doc__)
    add_config_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    def body() -> int:
        from relion_zo.config import load_config
        from relion_zo.db import make_engine
        from relion_zo.serve import serve

        setup_logging(args.verbose)
        site_file = os.path.abspath(args.config) if args.config else None
        config = load_config(site_file)
        zocalo = config.zocalo_path()
        engine = make_engine(config.credentials_path())
        check_schema(engine)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        service, ready = build(config, engine, zocalo, site_file)
        try:
            return serve(service, zocalo, stop=stop, ready=ready)
        finally:
            if getattr(service, "close", None):
                service.close()
            engine.dispose()

    return guarded(body)


def _worker(config, engine, zocalo_config, site_file):
    from relion_zo.manager import JobManager
    from relion_zo.worker import Supervisor, WorkerService, ready_text, spawn_wrapper

    env = dict(os.environ, ZOCALO_CONFIG=str(zocalo_config))
    if site_file:
        env["RELION_ZO_CONFIG"] = site_file
    if config.warm_wrappers:
        from relion_zo.warm import ForkServer

        server = ForkServer(env=env)
        server.start()  # before the first delivery: its imports are not a job's wait
        spawn, close = server.spawn, server.close
    else:
        spawn, close = functools.partial(spawn_wrapper, env=env), None
    supervisor = Supervisor(JobManager(engine, config, retry_seconds=0), ack=None, reject=None,
                            spawn=spawn)
    return (WorkerService(supervisor, config.worker_jobs, close=close),
            ready_text(config.worker_jobs))


def _dispatcher(config, engine, zocalo_config, site_file):
    import zocalo.configuration

    from relion_zo.dispatcher import RecipeFolder, RelionDispatcher, packaged_recipe_directory

    storage = zocalo.configuration.from_file(str(zocalo_config)).storage or {}
    folder = storage.get("zocalo.recipe_directory") or packaged_recipe_directory()
    service = RelionDispatcher(RecipeFolder(folder), engine,
                               retry_seconds=config.database_retry_seconds)
    return service, service.ready_text()


def check_schema(engine) -> None:
    """The schema and grants a worker needs (``schema.check``), before it consumes anything; a
    database that is down now is left to the retries of the work itself."""
    from sqlalchemy.exc import OperationalError

    from relion_zo import schema

    try:
        schema.check(engine, "processing")
    except OperationalError as exc:
        log.warning("could not check ISPyB's schema now: %s", exc.orig)


def main(argv: list[str] | None = None) -> int:
    return _serve("relion-zo worker", _worker, argv)


def dispatcher_main(argv: list[str] | None = None) -> int:
    return _serve("relion-zo dispatcher", _dispatcher, argv)
