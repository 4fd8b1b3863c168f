"""The site configuration: one YAML file named by ``RELION_ZO_CONFIG``.

It holds where data may live, where projects go, timing limits, the executables of programs that
cannot be installed everywhere, and the *paths* of the credentials files. Credentials themselves
never live here. Relative paths are taken relative to the configuration file's folder.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relion_zo.errors import RelionZoError
from relion_zo.paths import unsafe_reason

VISIT_FIELDS = frozenset({"data_root", "beamline", "year", "proposal", "visit"})
PROJECT_FIELDS = frozenset({"visit_directory", "processing_job_id"})
DAY = 86400.0
SIDES = ("web", "processing")  # who runs a command: docs/ispyb.md

ENV_VAR = "RELION_ZO_CONFIG"


class ConfigError(RelionZoError, ValueError):
    """The site configuration is missing or invalid."""


def checked_command(value: str | None, *, absolute: bool = False) -> str | None:
    """A program or file the site names that RELION puts into a command run through a shell:
    refused with the reason when the shell would misread it, or when ``absolute`` and it is
    not an absolute path."""
    reason = unsafe_reason(value) if value else None
    if reason:
        raise ValueError(reason)
    if absolute and value and not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


class Executables(BaseModel):
    """Programs relion_zo or RELION call. ``None`` means not installed at this site."""

    model_config = ConfigDict(extra="forbid")

    relion_pipeliner: str = "relion_pipeliner"
    ctffind: str | None = None
    motioncor2: str | None = None
    cryolo: str | None = None

    @field_validator("*")
    @classmethod
    def _shell_safe(cls, value: str | None) -> str | None:
        # RELION puts ctffind's and MotionCor2's paths into commands it runs through a shell.
        return checked_command(value)


QUEUE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a Slurm partition's name


class Queue(BaseModel):
    """Where RELION's jobs go when a job asks for ``*_submit_to_queue``: RELION 3.1 writes each
    job's script from ``submission_template`` and runs ``submit_command SCRIPT`` (docs/slurm.md).
    The site names all of it; a job may only choose among ``names``."""

    model_config = ConfigDict(extra="forbid")

    submit_command: str = Field(
        default="sbatch", description="RELION's 'Queue submit command:' (Slurm's sbatch)")
    submission_template: str | None = Field(
        default=None, description="RELION's 'Standard submission script:'; default: relion_zo's "
        "Slurm template (relion_zo/templates/slurm.sh)")
    names: list[str] = Field(
        default_factory=lambda: ["relion"], min_length=1,
        description="the queues (Slurm partitions) a job may name in queue_name; the first is "
        "the default")
    minimum_dedicated: int = Field(default=1, ge=1, le=64)
    slurm_conf: str | None = Field(
        default=None, description="SLURM_CONF for sbatch, squeue and scancel, when not the "
        "system's")

    @field_validator("submit_command")
    @classmethod
    def _shell_safe(cls, value: str) -> str:
        # RELION runs "submit_command script" through a shell
        return checked_command(value)

    @field_validator("submission_template", "slurm_conf")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return checked_command(value, absolute=True)

    @field_validator("names")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        import re

        for name in names:
            if not re.match(QUEUE_NAME, name):
                raise ValueError(f"{name!r} is not a queue name (letters, digits, _ . -)")
        return names

    def template(self) -> str:
        from relion_zo.slurm import packaged_template

        return self.submission_template or str(packaged_template())


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    data_roots: list[Path] = Field(min_length=1)
    visit_directory: str = Field(
        description="template with {data_root}, {beamline}, {year}, {proposal}, {visit}"
    )
    project_directory: str = "{visit_directory}/processed/relion_{processing_job_id}"
    heartbeat_seconds: float = Field(default=10.0, gt=0, le=3600)
    idle_seconds: float = Field(
        default=600.0, ge=0, le=30 * DAY, description="a job ends after this long with no new movie"
    )
    movie_wait_seconds: float = Field(
        default=120.0, ge=0, le=DAY,
        description="how long a movie may stay incomplete before the job fails naming it",
    )
    stall_seconds: float = Field(
        default=1800.0, gt=0, le=30 * DAY,
        description="a job fails, naming the RELION job, when a pass changes no file in its "
        "job folders for this long (a hung program)",
    )
    stale_heartbeats: int = Field(default=3, ge=1, le=1000)
    resend_after_seconds: float = Field(
        default=600.0, gt=0, le=7 * DAY,
        description="a job still submitted this long after Start has its message sent again",
    )
    submitted_limit_seconds: float = Field(
        default=DAY, gt=0, le=30 * DAY,
        description="a job still submitted this long after Start is closed as a failure",
    )
    database_retry_seconds: float = Field(
        default=900.0, ge=0, le=7 * DAY,
        description="how long a write is retried through a database outage before giving up",
    )
    worker_jobs: int = Field(
        default=1, ge=1, le=64, description="jobs one worker runs at once (its prefetch count)"
    )
    warm_wrappers: bool = Field(
        default=True, description="a worker forks each job's wrapper from a process that has "
        "imported a run's code already (relion_zo.warm), so a job is running sooner",
    )
    relion_it_defaults: dict[str, str | bool | int | float] = Field(
        default_factory=dict,
        description="values for relion_it options a job leaves out, in place of relion_it's "
        "own defaults (e.g. MPI and thread counts that fit this site's machines)",
    )
    ispyb_credentials: Path | None = None
    ispyb_web_credentials: Path | None = None
    zocalo_config: Path | None = None
    executables: Executables = Executables()
    queue: Queue | None = Field(
        default=None, description="RELION's cluster queue (Slurm); absent: every job runs on "
        "the worker's machine and *_submit_to_queue is refused")
    # crYOLO, where executables.cryolo names its cryolo_predict.py: its model (the general
    # model, or one trained at the site) and its confidence threshold
    cryolo_weights: str | None = None
    cryolo_threshold: float = Field(default=0.3, ge=0, le=1)

    @field_validator("cryolo_weights")
    @classmethod
    def _weights_shell_safe(cls, value: str | None) -> str | None:
        # RELION puts the model's path into the crYOLO job's command, run through a shell
        return checked_command(value, absolute=True)

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"data root {root} is not an absolute path")
            if root == Path(root.anchor):
                raise ValueError("a data root may not be the file system's root")
        return roots

    @field_validator("relion_it_defaults")
    @classmethod
    def _known_options(cls, values: dict) -> dict:
        from relion_zo.parameters import FIELDS, ParameterError, check_defaults

        unknown = sorted(k for k in values if k not in FIELDS)
        if unknown:
            raise ValueError(f"{unknown[0]} is not a relion_it option relion_zo knows")
        try:
            check_defaults(values)
        except ParameterError as exc:
            raise ValueError(str(exc)) from None
        return values

    @field_validator("visit_directory")
    @classmethod
    def _visit_template(cls, value: str) -> str:
        return _check_template(value, VISIT_FIELDS)

    @field_validator("project_directory")
    @classmethod
    def _project_template(cls, value: str) -> str:
        return _check_template(value, PROJECT_FIELDS)

    @property
    def stale_seconds(self) -> float:
        """A running job whose heartbeat is older than this is lost."""
        return self.heartbeat_seconds * self.stale_heartbeats

    def credentials_path(self, side: str = "processing") -> Path:
        """The ISPyB credentials INI of one side (docs/ispyb.md): the processing side's is
        ``ispyb_credentials``, else ``ISPYB_CREDENTIALS``; the web side's is
        ``ispyb_web_credentials`` when set, else the processing side's."""
        if side not in SIDES:
            raise ValueError(f"side {side!r} is not one of {SIDES}")
        if side == "web" and self.ispyb_web_credentials is not None:
            return self.ispyb_web_credentials
        return _configured_or_env(self.ispyb_credentials, "ISPYB_CREDENTIALS",
                                  "ISPyB credentials", "ispyb_credentials")

    def zocalo_path(self) -> Path:
        """The zocalo configuration: the configured path, else ``ZOCALO_CONFIG``."""
        return _configured_or_env(self.zocalo_config, "ZOCALO_CONFIG",
                                  "zocalo configuration", "zocalo_config")


def _check_template(value: str, fields: frozenset[str]) -> str:
    """A path template may name only ``fields``, in plain ``{name}`` form."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            raise ValueError(f"names {{{name}}}; it may use only "
                             + ", ".join(f"{{{f}}}" for f in sorted(fields)))
    return value


def _configured_or_env(value: Path | None, env_var: str, what: str, key: str) -> Path:
    path = value or os.environ.get(env_var)
    if not path:
        raise ConfigError(f"no {what}: set {key} in the site file or {env_var}")
    return Path(path)


def _resolve(value: Any, base: Path) -> Any:
    if value is None:
        return None
    path = Path(str(value))
    return path if path.is_absolute() else (base / path).resolve()


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given more than once", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_reason(exc: yaml.YAMLError) -> str:
    """One line: the problem and where, without echoing the file's text."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1})" if mark is not None else problem


def load_config(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    """Read the site file at ``path`` or at ``$RELION_ZO_CONFIG``."""
    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise ConfigError(f"no site configuration: pass --config or set {ENV_VAR}")
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read site configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"site configuration {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"site configuration {path} is not valid YAML: {yaml_reason(exc)}"
                          ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"site configuration {path} must be a mapping")
    base = path.resolve().parent
    roots = raw.get("data_roots")
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise ConfigError(f"site configuration {path}: data_roots must be a list of folders")
    raw["data_roots"] = [_resolve(r, base) for r in roots]
    for key in ("ispyb_credentials", "ispyb_web_credentials", "zocalo_config"):
        if raw.get(key) is not None:
            raw[key] = _resolve(raw[key], base)
    visit_template = raw.get("visit_directory")
    if isinstance(visit_template, str) and not visit_template.startswith(("/", "{")):
        raw["visit_directory"] = str(base / visit_template)
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"site configuration {path}: {where}: {msg}") from None
