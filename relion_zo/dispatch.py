"""A filter for zocalo's Dispatcher (entry point group ``zocalo.services.dispatcher.filters``).

``zocalo.go -p PJID`` sends ``{"recipes": [], "parameters": {"ispyb_process": PJID}}``: no
recipe. This filter reads the job's recipe from ISPyB (``ProcessingJob.recipe``, ``relion``
for relion_zo's jobs) and names it, so the Dispatcher loads ``relion.json`` from its recipe
directory. It also turns ``ispyb_process`` into an int. A malformed id or an unknown job raises
``ValueError``: the Dispatcher rejects the message, and the queue's delivery limit sends it to
``dlq.processing_recipe`` instead of retrying forever.

The database comes from the site file named by ``RELION_ZO_CONFIG``, opened at the first
message that needs it, not at import.
"""

from __future__ import annotations

import functools

from sqlalchemy import select
from sqlalchemy.orm import Session

from ispyb.sqlalchemy import ProcessingJob


def parse_job_id(value) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"ispyb_process {value!r} is not a processing job id") from None
    if number <= 0:
        raise ValueError(f"ispyb_process {value!r} is not a processing job id")
    return number


def step_job_id(recipe_step: dict | None, message=None) -> int:
    """The processing job a recipe step (or a plain message) is about: ``ispyb_process`` from
    the step's ``parameters`` or ``job_parameters``, else from the message itself."""
    for key in ("parameters", "job_parameters"):
        value = ((recipe_step or {}).get(key) or {}).get("ispyb_process")
        if value is not None:
            return parse_job_id(value)
    if isinstance(message, dict) and "ispyb_process" in message:
        return parse_job_id(message["ispyb_process"])
    raise ValueError("the message names no ispyb_process")


@functools.lru_cache(maxsize=1)
def _engine(config_path: str | None):
    from relion_zo.config import load_config
    from relion_zo.db import make_engine

    return make_engine(load_config(config_path).credentials_path())


def job_recipe(pjid: int, config_path: str | None = None) -> str:
    with Session(_engine(config_path)) as db:
        recipe = db.execute(
            select(ProcessingJob.recipe).where(ProcessingJob.processingJobId == pjid)
        ).scalar()
        found = recipe is not None or db.execute(
            select(ProcessingJob.processingJobId).where(ProcessingJob.processingJobId == pjid)
        ).first()
    if not found:
        raise ValueError(f"unknown processing job {pjid}")
    if not recipe:
        raise ValueError(f"processing job {pjid} names no recipe")
    return recipe


def ispyb_job_filter(message: dict, parameters: dict) -> tuple[dict, dict]:
    if "ispyb_process" not in parameters:
        return message, parameters
    pjid = parse_job_id(parameters["ispyb_process"])
    parameters["ispyb_process"] = pjid
    if not message.get("recipes") and not message.get("custom_recipe"):
        message["recipes"] = [job_recipe(pjid)]
    return message, parameters
