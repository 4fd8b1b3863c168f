"""``relion-zo dispatcher``: relion_zo's dispatch service for ``processing_recipe``.

It replaces zocalo's Dispatcher for relion_zo, because that one cannot be made safe from a
filter: it reads the message before any filter runs (a body that is not a JSON object ends the
service, again on every redelivery), it rejects what a filter refuses *with* requeue, and it
loads whatever file a message's ``recipes`` names relative to its recipe folder (``../..``
included).

A request is accepted when it is a JSON object with

- ``parameters``: an object whose ``ispyb_process`` is a processing job ISPyB knows (a
  positive integer or a string of digits); other parameters fill the recipe's placeholders;
- optionally ``recipes``: a list of recipe names. None (or an empty list) means the job's
  ``ProcessingJob.recipe``.

and nothing else: ``{"parameters": {"ispyb_process": N}}`` (PATo, SynchWeb, ``zocalo.go -p``)
and ``{"recipes": ["relion"], "parameters": {"ispyb_process": N}}`` (``zocalo.go -r relion``,
``relion-zo start``). Recipes come only from the recipe folder (the zocalo configuration's
``zocalo.recipe_directory``): a plain name (``dispatch.check_recipe_name``) whose ``NAME.json``
is a file directly in that folder. A message's own ``custom_recipe`` is refused. relion_zo's own
recipes (``relion``, ``relion-stop``) are package data, ``relion_zo/recipes``
(``packaged_recipe_directory``); a site may name that folder or a copy of its own.

An accepted request's recipe gets its parameters filled in (``Recipe.apply_parameters``, as
zocalo does) and is started in one broker transaction with the request's acknowledgement, so
the request is either consumed and its recipe sent, or neither. Everything else is rejected
without requeue, at once, into ``dlq.processing_recipe``, with the reason as one log line. The
service itself never stops for a message.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import workflows
import workflows.recipe
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relion_zo import dispatch
from relion_zo.broker import PROCESSING_RECIPE, dead_letter_queue
from relion_zo.retry import is_transient
from relion_zo.transport import (
    TRANSPORT_NAME,
    RelionPikaTransport,
    Unusable,
    decode_body,
    describe,
    json_kind,
)

log = logging.getLogger(__name__)

REQUEST_KEYS = frozenset({"parameters", "recipes"})
MAX_RECIPES = 10
GUID = re.compile(r"[A-Za-z0-9-]{8,64}")
READY_TEXT = "dispatcher ready"  # what the service logs once it consumes processing_recipe


@dataclass(frozen=True)
class Request:
    """A checked request: the job, the recipes it names (maybe none) and the parameters."""

    job_id: int
    recipes: tuple[str, ...]
    parameters: dict = field(hash=False)


def parse_request(body: bytes | str) -> Request:
    """The request a delivery's body holds, or ``Unusable`` with the reason."""
    message = decode_body(body)
    if not isinstance(message, dict):
        raise Unusable(f"the body is a JSON {json_kind(message)}, not an object")
    if "custom_recipe" in message:
        raise Unusable("custom recipes are not accepted; name a recipe of the recipe folder")
    extra = sorted(set(message) - REQUEST_KEYS)
    if extra:
        raise Unusable(f"unexpected key(s) {', '.join(repr(k)[:40] for k in extra[:5])}")
    parameters = message.get("parameters")
    if not isinstance(parameters, dict):
        raise Unusable(f"'parameters' must be an object, not a JSON {json_kind(parameters)}")
    if "ispyb_process" not in parameters:
        raise Unusable("the parameters name no ispyb_process")
    try:
        job_id = dispatch.parse_job_id(parameters["ispyb_process"])
        names = dispatch.recipe_names(message.get("recipes"))
    except ValueError as exc:
        raise Unusable(str(exc)) from None
    if len(names) > MAX_RECIPES:
        raise Unusable(f"{len(names)} recipes named; at most {MAX_RECIPES} are accepted")
    guid = parameters.get("guid")
    if not (isinstance(guid, str) and GUID.fullmatch(guid)):
        guid = str(uuid.uuid4())
    return Request(job_id, tuple(names), {**parameters, "ispyb_process": job_id, "guid": guid})


def packaged_recipe_directory() -> Path:
    """The folder of the recipes installed with relion_zo (package data ``relion_zo/recipes``)."""
    folder = resources.files("relion_zo") / "recipes"
    if not isinstance(folder, Path) or not folder.is_dir():
        raise NotADirectoryError(f"relion_zo's recipes are not a folder on disk: {folder}")
    return folder


class RecipeFolder:
    """The recipes a request may name: ``NAME.json`` files directly in one folder."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"recipe folder {self.folder} is not a directory")

    def load(self, name: str) -> workflows.recipe.Recipe:
        try:
            name = dispatch.check_recipe_name(name)
        except ValueError as exc:
            raise Unusable(str(exc)) from None
        path = self.folder / f"{name}.json"
        if not path.is_file() or path.resolve().parent != self.folder:
            raise Unusable(f"recipe {name!r} is not in the recipe folder")
        try:
            recipe = workflows.recipe.Recipe(path.read_text())
            recipe.validate()
        except (OSError, ValueError, workflows.Error) as exc:
            raise Unusable(f"recipe {name!r} cannot be used: {describe(exc)}") from None
        return recipe

    def build(self, names: tuple[str, ...] | list[str], parameters: Mapping[str, Any]
              ) -> workflows.recipe.Recipe:
        """The named recipes merged into one, placeholders filled from ``parameters``."""
        combined = workflows.recipe.Recipe()
        for name in names:
            combined = combined.merge(self.load(name))
        try:
            combined.apply_parameters(dict(parameters))
        except Exception as exc:  # noqa: BLE001 - a parameter the recipe cannot take
            raise Unusable(f"the parameters do not fit the recipe: {describe(exc)}") from None
        return combined


def recipes_for(request: Request, stored: Callable[[int], str | None]) -> tuple[str, ...]:
    """The request's recipes, else the job's stored one (``stored`` reads ISPyB and raises
    ``ValueError`` for an unknown job; it is asked either way, so no request for an unknown
    job starts anything)."""
    try:
        recipe = stored(request.job_id)
    except ValueError as exc:
        raise Unusable(str(exc)) from None
    if request.recipes:
        return request.recipes
    if not recipe:
        raise Unusable(f"processing job {request.job_id} names no recipe")
    try:
        return (dispatch.check_recipe_name(recipe),)
    except ValueError as exc:
        raise Unusable(f"processing job {request.job_id}: {exc}") from None


def start_recipe(transport, header: Mapping, recipe: workflows.recipe.Recipe, guid: str) -> None:
    """Acknowledge the request and send the recipe's first messages in one transaction."""
    txn = transport.transaction_begin(subscription_id=header["subscription"])
    try:
        transport.ack(header, transaction=txn)
        wrapper = workflows.recipe.RecipeWrapper(recipe=recipe, transport=transport,
                                                 environment={"ID": guid})
        wrapper.start(transaction=txn)
    except BaseException:
        transport.transaction_abort(txn)
        raise
    transport.transaction_commit(txn)


# ---------------------------------------------------------------------------- the service

class RelionDispatcher:
    """relion_zo's dispatch service on ``processing_recipe`` (run by ``relion_zo.serve``)."""

    def __init__(self, recipes: RecipeFolder, engine, *, retry_seconds: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.recipes = recipes
        self.engine = engine
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._transport = None
        # Requests that met a database outage: (header, body, first seen, next try).
        self.waiting: list[list] = []

    def subscriptions(self):
        return [(PROCESSING_RECIPE, 1, self.on_request)]

    def attach(self, transport) -> None:
        if not isinstance(transport, RelionPikaTransport):
            log.warning("transport %s is not %s: a message without headers will end this "
                        "service", type(transport).__name__, TRANSPORT_NAME)
        self._transport = transport

    def detach(self) -> None:
        self._transport = None
        self.waiting.clear()  # the broker has requeued them

    def poll(self) -> None:
        """Requests kept through a database outage are tried again, with backoff."""
        now = self.clock()
        for entry in list(self.waiting):
            if entry[3] <= now:
                self.waiting.remove(entry)
                self.on_request(entry[0], entry[1], since=entry[2])

    def ready_text(self) -> str:
        return f"{READY_TEXT} (pid {os.getpid()}): recipes from {self.recipes.folder}"

    def close(self) -> None:
        self.engine.dispose()

    def _stored_recipe(self, pjid: int) -> str | None:
        with Session(self.engine) as db:
            return dispatch.stored_recipe(db, pjid)

    def on_request(self, header: Mapping, body: bytes, since: float | None = None) -> None:
        """One delivery on ``processing_recipe``; never raises. A request that meets a
        database outage is kept (unacknowledged) and tried again, not dead-lettered, for up to
        ``retry_seconds``."""
        first = since is None
        since = self.clock() if since is None else since
        try:
            request = parse_request(body)
            names = recipes_for(request, self._stored_recipe)
            recipe = self.recipes.build(names, request.parameters)
        except SQLAlchemyError as exc:
            waited = self.clock() - since
            if is_transient(exc) and waited < self.retry_seconds:
                if first:
                    log.warning("request %s waits for the database (%s)",
                                header.get("message-id"), describe(exc))
                delay = min(10.0, 1.0 + waited / 2)
                self.waiting.append([header, body, since, self.clock() + delay])
                return None
            return self._dead_letter(header, f"database error: {describe(exc)}")
        except Exception as exc:  # noqa: BLE001 - every refusal is a dead letter
            return self._dead_letter(header, describe(exc))
        try:
            start_recipe(self._transport, header, recipe, request.parameters["guid"])
        except Exception as exc:  # noqa: BLE001
            return self._dead_letter(header, f"could not start the recipe: {describe(exc)}")
        log.info("processing job %s: recipe %s started (%s)", request.job_id,
                 "+".join(names), request.parameters["guid"])

    def _dead_letter(self, header: Mapping, reason: str) -> None:
        log.error("request %s refused, sent to %s: %s", header.get("message-id"),
                  dead_letter_queue(PROCESSING_RECIPE), reason)
        try:
            self._transport.nack(header, requeue=False)
        except Exception as exc:  # noqa: BLE001 - the broker connection is going away
            log.error("request %s could not be rejected: %s", header.get("message-id"),
                      describe(exc))
