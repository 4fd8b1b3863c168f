"""The zocalo wrapper ``relion``: a recipe step's ``ispyb_process`` in, ``runner.run_job`` out.

Registered under the ``zocalo.wrappers`` entry point, so it runs unchanged under
``zocalo.wrap --wrap relion --recipewrapper FILE``. The site file comes from
``RELION_ZO_CONFIG``.
"""

from __future__ import annotations

from zocalo.wrapper import BaseWrapper

from relion_zo.config import load_config
from relion_zo.db import make_engine
from relion_zo.dispatch import step_job_id
from relion_zo.errors import InputError
from relion_zo.runner import run_job_until_signalled


class RelionWrapper(BaseWrapper):
    def run(self) -> bool:
        try:
            pjid = step_job_id(self.recwrap.recipe_step)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        config = load_config()
        engine = make_engine(config.credentials_path())
        try:
            outcome = run_job_until_signalled(
                pjid, engine=engine, config=config,
                command_line=f"zocalo.wrap --wrap relion (ispyb_process {pjid})",
            )
        finally:
            engine.dispose()
        self.log.info("processing job %s: %s (%s)", pjid, outcome.state, outcome.message)
        return outcome.state in ("success", "stopped", "skipped")
