"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class RelionZoError(Exception):
    """Base of every error that is the user's or the site's to fix, not a bug."""


class NotFoundError(RelionZoError, LookupError):
    """An id or name that the database does not know."""


class InputError(RelionZoError, ValueError):
    """A value that fails a check (paths, templates, options)."""


class ForeignJobError(InputError):
    """A processing job of another pipeline (its recipe is not relion_zo's): never touched."""


class ActiveJobError(RelionZoError):
    """The data collection already has an active job."""

    def __init__(self, data_collection_id: int, processing_job_id: int, state: str):
        self.data_collection_id = data_collection_id
        self.processing_job_id = processing_job_id
        self.state = state
        super().__init__(
            f"data collection {data_collection_id} already has active processing job "
            f"{processing_job_id} ({state}); stop it first or use restart"
        )
