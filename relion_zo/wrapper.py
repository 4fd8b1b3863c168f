"""The zocalo wrapper ``relion``: a recipe step's ``ispyb_process`` in, ``runner.run_job`` out.

Registered under the ``zocalo.wrappers`` entry point, so it runs unchanged under
``zocalo.wrap --wrap relion --recipewrapper FILE``. The site file comes from
``RELION_ZO_CONFIG``.
"""

from __future__ import annotations

from zocalo.wrapper import BaseWrapper

from relion_zo.config import load_config
from relion_zo.db import make_engine
from relion_zo.errors import InputError
from relion_zo.runner import run_job_until_signalled


def processing_job_id(recipe_step: dict) -> int:
    """``ispyb_process`` from the step's ``job_parameters`` (or ``parameters``)."""
    for key in ("job_parameters", "parameters"):
        value = (recipe_step.get(key) or {}).get("ispyb_process")
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                raise InputError(f"ispyb_process {value!r} is not a job id") from None
    raise InputError("the recipe step has no ispyb_process")


class RelionWrapper(BaseWrapper):
    def run(self) -> bool:
        pjid = processing_job_id(self.recwrap.recipe_step)
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
