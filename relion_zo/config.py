"""The site configuration: one YAML file named by ``RELION_ZO_CONFIG``.

It holds where data may live, where projects go, timing limits, the executables of programs that
cannot be installed everywhere, and the *paths* of the credentials files. Credentials themselves
never live here. Relative paths are taken relative to the configuration file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from relion_zo.errors import RelionZoError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_VAR = "RELION_ZO_CONFIG"


class ConfigError(RelionZoError, ValueError):
    """The site configuration is missing or invalid."""


class Executables(BaseModel):
    """Programs relion_zo or RELION call. ``None`` means not installed at this site."""

    model_config = ConfigDict(extra="forbid")

    relion_pipeliner: str = "relion_pipeliner"
    ctffind: str | None = None
    motioncor2: str | None = None
    cryolo: str | None = None


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_roots: list[Path] = Field(min_length=1)
    visit_directory: str = Field(
        description="template with {data_root}, {beamline}, {year}, {proposal}, {visit}"
    )
    project_directory: str = "{visit_directory}/processed/relion_{processing_job_id}"
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    idle_seconds: float = Field(
        default=600.0, ge=0, description="a job ends after this long with no new movie"
    )
    stale_heartbeats: int = Field(default=3, ge=1)
    worker_jobs: int = Field(
        default=1, ge=1, le=64, description="jobs one worker runs at once (its prefetch count)"
    )
    ispyb_credentials: Path | None = None
    zocalo_config: Path | None = None
    executables: Executables = Executables()

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"data root {root} is not an absolute path")
        return roots

    @property
    def stale_seconds(self) -> float:
        """A running job whose heartbeat is older than this is lost."""
        return self.heartbeat_seconds * self.stale_heartbeats

    def credentials_path(self) -> Path:
        """The ISPyB credentials INI: the configured path, else ``ISPYB_CREDENTIALS``."""
        return _configured_or_env(self.ispyb_credentials, "ISPYB_CREDENTIALS",
                                  "ISPyB credentials", "ispyb_credentials")

    def zocalo_path(self) -> Path:
        """The zocalo configuration: the configured path, else ``ZOCALO_CONFIG``."""
        return _configured_or_env(self.zocalo_config, "ZOCALO_CONFIG",
                                  "zocalo configuration", "zocalo_config")


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


def load_config(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    """Read the site file at ``path`` or at ``$RELION_ZO_CONFIG``."""
    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise ConfigError(f"no site configuration: pass --config or set {ENV_VAR}")
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read site configuration {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"site configuration {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"site configuration {path} must be a mapping")
    base = path.resolve().parent
    raw["data_roots"] = [_resolve(r, base) for r in raw.get("data_roots") or []]
    for key in ("ispyb_credentials", "zocalo_config"):
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
        raise ConfigError(f"site configuration {path}: {where}: {first['msg']}") from None
