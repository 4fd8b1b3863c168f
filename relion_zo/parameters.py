"""The relion_it parameter schema: RELION 3.1 relion_it option names, types, defaults, ranges.

ISPyB stores every value as a string (``ProcessingJobParameter.parameterValue``). The same schema
types them at Start, before anything is written, and again in the wrapper before anything touches
disk. Errors name the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from relion_zo.errors import InputError
from relion_zo.paths import unsafe_reason

KEY_LENGTH = 80  # ProcessingJobParameter.parameterKey
VALUE_LENGTH = 1024  # ProcessingJobParameter.parameterValue
MOVIE_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff", ".eer")


class ParameterError(InputError):
    """A parameter is unknown, repeated, of the wrong type or out of range."""

    def __init__(self, key: str | None, message: str):
        self.key = key
        super().__init__(f"parameter {key}: {message}" if key else message)


class RelionItParameters(BaseModel):
    """relion_it 3.1 options that relion_zo reads. Keys are relion_it's own names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- General / import
    import_images: str | None = Field(
        default=None,
        max_length=VALUE_LENGTH,
        description="glob of movies: Movies/<glob> (relion_it's form), a glob relative to the "
        "raw folder, or an absolute glob inside it; default: the data collection's template",
    )
    angpix: float = Field(gt=0, le=20, description="pixel size of the movies in Å")
    voltage: float = Field(ge=60, le=400, description="acceleration voltage in kV")
    Cs: float = Field(ge=0, le=10, description="spherical aberration in mm")
    ampl_contrast: float = Field(default=0.1, ge=0, le=1)
    stop_after_ctf_estimation: bool = True
    # relion_zo extension (not a relion_it key): motion correction is the last stage.
    stop_after_motion_correction: bool = False
    # --- Streaming
    preprocess_repeat_times: int = Field(default=999, ge=1, le=100000)
    preprocess_repeat_wait: float = Field(
        default=1, ge=0, le=60, description="minutes between passes that found no new movie"
    )
    # --- Motion correction
    motioncor_do_own: bool = True
    motioncor_doseperframe: float = Field(gt=0, le=20, description="e/Å² per frame")
    motioncor_binning: int = Field(default=1, ge=1, le=8)
    motioncor_gainreference: str = Field(default="", max_length=VALUE_LENGTH)
    motioncor_gainflip: Literal[
        "No flipping (0)", "Flip upside down (1)", "Flip left to right (2)"
    ] = "No flipping (0)"
    motioncor_gainrot: Literal[
        "No rotation (0)", "90 degrees (1)", "180 degrees (2)", "270 degrees (3)"
    ] = "No rotation (0)"
    motioncor_defectfile: str = Field(default="", max_length=VALUE_LENGTH)
    motioncor_bfactor: float = Field(default=150, ge=0, le=10000)
    motioncor_patches_x: int = Field(default=5, ge=1, le=20)
    motioncor_patches_y: int = Field(default=5, ge=1, le=20)
    motioncor_threads: int = Field(default=1, ge=1, le=256)
    motioncor_mpi: int = Field(default=1, ge=1, le=256)
    motioncor_gpu: str = Field(default="0", pattern=r"^[0-9:,]*$", max_length=80)
    motioncor_submit_to_queue: bool = False
    # --- CTF estimation (CTFFIND 4.1; its executable comes from the site file)
    use_ctffind_instead: bool = True
    ctffind_boxsize: int = Field(default=512, ge=64, le=4096)
    ctffind_astigmatism: float = Field(default=100, ge=0, le=100000)
    ctffind_maxres: float = Field(default=5, gt=0, le=100)
    ctffind_minres: float = Field(default=30, gt=0, le=1000)
    ctffind_defocus_min: float = Field(default=5000, ge=0, le=100000)
    ctffind_defocus_max: float = Field(default=50000, ge=0, le=200000)
    ctffind_defocus_step: float = Field(default=500, gt=0, le=10000)
    ctffind_do_phaseshift: bool = False
    ctffind_mpi: int = Field(default=1, ge=1, le=256)
    ctffind_submit_to_queue: bool = False
    # --- Picking, extraction, classification: accepted and written to relion_it_options.py;
    # relion_zo runs no stage after CTF estimation yet (stop_after_ctf_estimation must be true).
    autopick_do_LoG: bool = True
    autopick_do_cryolo: bool = False
    autopick_LoG_diam_min: float = Field(default=150, gt=0, le=10000)
    autopick_LoG_diam_max: float = Field(default=180, gt=0, le=10000)
    autopick_LoG_adjust_threshold: float = Field(default=0.0, ge=-1, le=1)
    extract_boxsize: int = Field(default=256, ge=16, le=4096)
    extract_downscale: bool = False
    extract_small_boxsize: int = Field(default=64, ge=16, le=4096)
    do_class2d: bool = True
    do_class3d: bool = True
    do_second_pass: bool = True
    batch_size: int = Field(default=10000, ge=1, le=10_000_000)
    class2d_nr_classes: int = Field(default=50, ge=1, le=1000)
    class2d_nr_iter: int = Field(default=20, ge=1, le=1000)
    mask_diameter: float = Field(default=190, gt=0, le=10000)
    symmetry: str = Field(default="C1", pattern=r"^[A-Za-z][0-9A-Za-z]*$", max_length=10)

    @field_validator("import_images")
    @classmethod
    def _relative_glob(cls, value: str | None) -> str | None:
        if value is None:
            return value
        reason = unsafe_reason(value, glob=True)
        if reason:
            raise ValueError(reason)
        if ".." in value.split("/"):
            raise ValueError("must not contain '..' (it must stay inside the raw folder)")
        if not value.lower().endswith(MOVIE_SUFFIXES):
            raise ValueError(f"must end in a movie suffix ({', '.join(MOVIE_SUFFIXES)})")
        return value

    @field_validator("motioncor_gainreference", "motioncor_defectfile")
    @classmethod
    def _shell_safe_path(cls, value: str) -> str:
        reason = unsafe_reason(value) if value else None
        if reason:
            raise ValueError(reason)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RelionItParameters:
        if self.ctffind_minres <= self.ctffind_maxres:
            raise ValueError("ctffind_minres must be larger than ctffind_maxres (both in Å)")
        if self.ctffind_defocus_min >= self.ctffind_defocus_max:
            raise ValueError("ctffind_defocus_min must be below ctffind_defocus_max")
        return self

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


FIELDS = RelionItParameters.model_fields
REQUIRED = tuple(name for name, field in FIELDS.items() if field.is_required())


FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
INT_TEXT = re.compile(r"^[+-]?\d+(\.0*)?$")  # "300" or "300.0", as the web UIs' drivers write


def _number_text(key: str, text: str) -> str:
    """Refuse what Python would read but a person did not mean (``1_0``, ``nan``, `` inf``)."""
    kind = FIELDS[key].annotation
    if kind not in (int, float):
        return text
    value = text.strip()
    if value.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise ParameterError(key, f"must be a finite number (got {text!r})")
    if kind is float and not FLOAT_TEXT.match(value):
        raise ParameterError(key, f"is not a number (got {text!r})")
    if kind is int:
        if not INT_TEXT.match(value):
            raise ParameterError(key, f"is not a whole number (got {text!r})")
        value = value.split(".")[0]
    return value


def to_text(value: Any) -> str:
    """The string ISPyB stores for a typed value; ``parse`` reads it back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def pairs_from_args(items: Iterable[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` command-line items."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(None, f"expected key=value, got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def parse(pairs: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> RelionItParameters:
    """Type and check parameters given as (key, value) pairs; values may be strings."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    raw: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise ParameterError(None, f"parameter keys must be non-empty strings, got {key!r}")
        if key not in FIELDS:
            raise ParameterError(key, "unknown key (relion_it option names only)")
        if key in raw:
            raise ParameterError(key, "given more than once")
        if value is None:
            raise ParameterError(key, "has no value")
        text = to_text(value)
        if len(text) > VALUE_LENGTH:
            raise ParameterError(key, f"value longer than {VALUE_LENGTH} characters")
        raw[key] = _number_text(key, text)
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ParameterError(missing[0], "is required" + (
            f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    try:
        return RelionItParameters.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        given = raw.get(key or "", "")
        msg = first["msg"].removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
        raise ParameterError(key, f"{msg} (got {given!r})" if key else msg) from None


def explicit_items(params: RelionItParameters) -> list[tuple[str, str]]:
    """The keys a user set, as the strings ISPyB stores, in schema order."""
    given = params.model_fields_set
    return [(k, to_text(getattr(params, k))) for k in FIELDS if k in given]
