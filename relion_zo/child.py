"""The wrapper process a worker starts for one run: ``python -m relion_zo.child PJID PROGRAM``.

It runs in a session of its own and outlives the worker that started it: a worker restart, a
RabbitMQ restart or a network blip do not end the job. It beats, watches for a stop request
and writes its own final status through ``runner.run_job``. A SIGTERM (a service manager
shutting the machine's services down) ends RELION and records ``Shutdown``, which
``relion-zo resume`` continues. The site file comes from ``RELION_ZO_CONFIG``.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    pjid, program = (int(a) for a in (argv or sys.argv[1:])[:2])
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s job {pjid} %(levelname)s %(name)s: %(message)s")
    from relion_zo.config import load_config
    from relion_zo.db import make_engine
    from relion_zo.runner import run_job_until_signalled

    config = load_config()
    engine = make_engine(config.credentials_path())
    try:
        outcome = run_job_until_signalled(
            pjid, engine=engine, config=config, program_id=program,
            command_line=f"relion-zo worker (ispyb_process {pjid})",
        )
    finally:
        engine.dispose()
    logging.getLogger("relion_zo.child").info("%s: %s", outcome.state, outcome.message)
    return 0 if outcome.state in ("success", "stopped", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
