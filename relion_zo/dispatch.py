"""What a request on ``processing_recipe`` may name: a processing job and recipe names.

The checks are shared by relion_zo's own dispatch service (``relion_zo.dispatcher``, what
``relion-zo dispatcher`` runs) and by a filter for zocalo's Dispatcher (entry point group
``zocalo.services.dispatcher.filters``), for a facility that keeps running zocalo's.

- ``parse_job_id``: an ``ispyb_process`` is a positive integer, or a string of ASCII digits.
- ``check_recipe_name``: a recipe name is a plain file name (``NAME.json`` in the recipe
  folder): letters, digits, ``_``, ``.``, ``-``; no ``/``, no ``..``.
- ``stored_recipe`` / ``job_recipe``: the web UIs and ``zocalo.go -p PJID`` send no recipe;
  the job's ``ProcessingJob.recipe`` (``relion`` for relion_zo's jobs) names it.

The filter (``ispyb_job_filter``) refuses recipe names that are not plain names, turns
``ispyb_process`` into an int and names the job's recipe when the message names none. A
refusal raises ``ValueError``: zocalo's Dispatcher rejects the message and the queue's delivery
limit sends it to ``dlq.processing_recipe``. The filter opens the database from the site file
named by ``RELION_ZO_CONFIG`` at the first message that needs it, not at import.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ispyb.sqlalchemy import ProcessingJob
from sqlalchemy import select
from sqlalchemy.orm import Session

MAX_JOB_ID = 2**32 - 1  # ProcessingJob.processingJobId is an INT UNSIGNED in ISPyB
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_job_id(value: Any) -> int:
    """A processing job id from a message: an int, or ASCII digits (spaces around allowed)."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 10:
            number = int(text)
    if number is None or not 0 < number <= MAX_JOB_ID:
        raise ValueError(f"ispyb_process {_shown(value)} is not a processing job id")
    return number


def check_recipe_name(name: Any) -> str:
    """``name`` if it is a plain recipe name, else ``ValueError``."""
    if not isinstance(name, str) or not RECIPE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"recipe name {_shown(name)} is not a plain name")
    return name


def recipe_names(recipes: Any) -> list[str]:
    """A message's ``recipes``: a list of plain names (missing or ``None``: none), each once."""
    if recipes is None:
        return []
    if not isinstance(recipes, list):
        raise ValueError(f"'recipes' must be a list of recipe names, not {_shown(recipes)}")
    return list(dict.fromkeys(check_recipe_name(name) for name in recipes))


def step_job_id(recipe_step: Any, message: Any = None) -> int:
    """The processing job a recipe step (or a plain message) is about: ``ispyb_process`` from
    the step's ``parameters`` or ``job_parameters``, else from the message itself."""
    step = recipe_step if isinstance(recipe_step, dict) else {}
    for key in ("parameters", "job_parameters"):
        section = step.get(key)
        if isinstance(section, dict) and section.get("ispyb_process") is not None:
            return parse_job_id(section["ispyb_process"])
    if isinstance(message, dict) and "ispyb_process" in message:
        return parse_job_id(message["ispyb_process"])
    raise ValueError("the message names no ispyb_process")


def stored_recipe(db: Session, pjid: int) -> str | None:
    """The job's ``ProcessingJob.recipe`` (``None`` when empty); ``ValueError`` for an
    unknown job."""
    row = db.execute(
        select(ProcessingJob.recipe).where(ProcessingJob.processingJobId == pjid)
    ).first()
    if row is None:
        raise ValueError(f"unknown processing job {pjid}")
    return row[0] or None


@functools.lru_cache(maxsize=1)
def _engine(config_path: str | None):
    from relion_zo.config import load_config
    from relion_zo.db import make_engine

    return make_engine(load_config(config_path).credentials_path())


def job_recipe(pjid: int, config_path: str | None = None) -> str:
    with Session(_engine(config_path)) as db:
        recipe = stored_recipe(db, pjid)
    if not recipe:
        raise ValueError(f"processing job {pjid} names no recipe")
    return recipe


def ispyb_job_filter(message: dict, parameters: dict) -> tuple[dict, dict]:
    """zocalo Dispatcher filter: plain recipe names only; a job's recipe from ISPyB."""
    if "recipes" in message:
        message["recipes"] = recipe_names(message["recipes"])
    if "ispyb_process" not in parameters:
        return message, parameters
    pjid = parse_job_id(parameters["ispyb_process"])
    parameters["ispyb_process"] = pjid
    if not message.get("recipes") and not message.get("custom_recipe"):
        message["recipes"] = [check_recipe_name(job_recipe(pjid))]
    return message, parameters
