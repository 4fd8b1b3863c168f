"""The relion_it parameter schema: RELION 3.1 relion_it option names, types, defaults, ranges.

ISPyB stores every value as a string (``ProcessingJobParameter.parameterValue``), as the user gave
it: ``parse`` keeps the given text beside the typed value and ``explicit_items`` hands it back, so
``voltage=300`` is stored as "300", never re-written as "300.0". The same schema types the values at
Start, before anything is written, and again in the wrapper before anything touches disk. Ranges
are what RELION accepts (a pixel size must be positive, a box even), not guesses at what is usual.
Errors name the key.
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
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from relion_zo.config import QUEUE_NAME
from relion_zo.errors import InputError
from relion_zo.paths import unsafe_reason

KEY_LENGTH = 80  # ProcessingJobParameter.parameterKey
VALUE_LENGTH = 1024  # ProcessingJobParameter.parameterValue
MOVIE_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff", ".eer")
INT_MAX = 2**31 - 1  # RELION reads whole numbers into a C int
# How booleans reach the table: 1/0 (PATo, SynchWeb), True/False (Python), true/false (JSON).
GPU_IDS = r"^[0-9:,]*$"  # RELION's "Which GPUs to use:": device numbers, ':' and ','
SYMMETRY = r"^[A-Za-z][0-9A-Za-z]*$"  # C1, D7, O, I3 ...
# RELION 3.1's angular sampling choices (src/pipeline_jobs.h, job_sampling_options)
Sampling = Literal["30 degrees", "15 degrees", "7.5 degrees", "3.7 degrees", "1.8 degrees",
                   "0.9 degrees", "0.5 degrees", "0.2 degrees", "0.1 degrees"]
BOOL_TEXT = {"1": True, "0": False, "true": True, "false": False}
# relion_zo's own keys: not relion_it options.
RELION_ZO_ONLY = frozenset({"stop_after_motion_correction"})
# Keys a web UI writes that inform nothing here: accepted, stored as given, never passed on.
NOT_APPLICABLE = {
    "acquisition_software": "SynchWeb records the acquisition program (EPU, SerialEM); RELION "
    "reads the movies the same way whichever wrote them",
}


# relion_it 3.1 options relion_zo does not take, each with the reason a refusal names
# (docs/relion-it-options.md has all 143).
_NOT_TAKEN_GROUPS: dict[str, tuple[str, ...]] = {
    "references are files a job cannot name (relion_zo picks pass 1 with LoG, makes its 3D "
    "reference with InitialModel and picks the second pass with pass 1's best 3D class); "
    "leave it out": (
        "autopick_2dreferences", "autopick_3dreference", "have_3d_reference",
        "class3d_reference", "class3d_ref_is_correct_greyscale", "class3d_ref_is_ctf_corrected",
        "class3d_reference_mask"),
    "scratch space is the site's to name, not a job's; leave it out": ("refine_scratch_disk",),
    "Gctf is not supported (CTFFIND 4.1 is used); leave it out": (
        "gctf_exe", "gctf_gpu", "ctffind_do_ignore_search_params", "ctffind_do_EPA"),
    "the site file names the programs (executables.motioncor2, executables.ctffind), not a "
    "job; leave it out": ("motioncor_exe", "ctffind4_exe"),
    "free-form arguments would reach RELION's shell, so relion_zo takes none; leave it out": (
        "motioncor_other_args", "autopick_other_args", "class2d_other_args",
        "class3d_other_args", "inimodel_other_args"),
    "relion_zo imports movies only (relion_it's default, true); leave it out": (
        "images_are_movies",),
}
NOT_TAKEN: dict[str, str] = {name: reason for reason, names in _NOT_TAKEN_GROUPS.items()
                             for name in names}


def ends_in_movie_suffix(glob: str) -> bool:
    """``*.mrc``, or ``*mrc`` as PATo builds it from an ``imageSuffix`` stored without its dot
    (``<imageDirectory>/GridSquare*/Data/*<imageSuffix>``)."""
    lowered = glob.lower()
    return lowered.endswith(MOVIE_SUFFIXES) or lowered.endswith(
        tuple("*" + suffix.lstrip(".") for suffix in MOVIE_SUFFIXES))


class ParameterError(InputError):
    """A parameter is unknown, repeated, of the wrong type or out of range."""

    def __init__(self, key: str | None, message: str):
        self.key = key
        super().__init__(f"parameter {key}: {message}" if key else message)


class RelionItParameters(BaseModel):
    """relion_it 3.1 options that relion_zo reads. Keys are relion_it's own names, plus the keys
    the web UIs write. Two sets are equal when their values are, however they were written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- General / import
    import_images: str | None = Field(
        default=None,
        max_length=VALUE_LENGTH,
        description="glob of movies: Movies/<glob> (relion_it's form), a glob relative to the "
        "raw folder, or an absolute glob inside it; default: the data collection's template",
    )
    angpix: float = Field(gt=0, description="pixel size of the movies in Å")
    voltage: float = Field(gt=0, description="acceleration voltage in kV")
    Cs: float = Field(ge=0, description="spherical aberration in mm (CTFFIND's minimum: 0)")
    ampl_contrast: float = Field(default=0.1, ge=0, le=1)
    stop_after_ctf_estimation: bool = False
    # relion_zo extension (not a relion_it key): motion correction is the last stage.
    stop_after_motion_correction: bool = False
    # --- Streaming
    preprocess_repeat_times: int = Field(default=999, ge=1, le=INT_MAX)
    preprocess_repeat_wait: float = Field(
        default=1, ge=0, description="minutes between passes that found no new movie"
    )
    # --- Motion correction
    motioncor_do_own: bool = True
    motioncor_doseperframe: float = Field(gt=0, description="e/Å² per frame (per EER fraction)")
    motioncor_binning: int = Field(default=1, ge=1, le=INT_MAX)
    motioncor_gainreference: str = Field(default="", max_length=VALUE_LENGTH)
    motioncor_gainflip: Literal[
        "No flipping (0)", "Flip upside down (1)", "Flip left to right (2)"
    ] = "No flipping (0)"
    motioncor_gainrot: Literal[
        "No rotation (0)", "90 degrees (1)", "180 degrees (2)", "270 degrees (3)"
    ] = "No rotation (0)"
    motioncor_defectfile: str = Field(default="", max_length=VALUE_LENGTH)
    motioncor_bfactor: float = Field(default=150, ge=0)
    motioncor_patches_x: int = Field(default=4, ge=1, le=INT_MAX)
    motioncor_patches_y: int = Field(default=4, ge=1, le=INT_MAX)
    motioncor_threads: int = Field(default=6, ge=1, le=INT_MAX)
    motioncor_mpi: int = Field(default=4, ge=1, le=INT_MAX)
    motioncor_gpu: str = Field(default="0", pattern=GPU_IDS, max_length=80)
    motioncor_submit_to_queue: bool = False
    eer_upsampling: int = Field(
        default=1, ge=1, le=2, description="EER super-resolution: 1 (4K) or 2 (8K), as RELION allows")
    eer_grouping: int = Field(
        default=20,
        ge=1,
        le=INT_MAX,
        description="EER frames per fraction (relion_it's default; relion_run_motioncorr's is 40)",
    )
    # --- CTF estimation (CTFFIND 4.1; its executable comes from the site file). The limits are
    # the ones CTFFIND asks its questions with; RELION passes the values on unchecked.
    use_ctffind_instead: bool = True
    ctffind_boxsize: int = Field(default=512, ge=128, le=INT_MAX)
    # CTFFIND's astigmatism restraint; a negative value turns it off
    ctffind_astigmatism: float = 100
    ctffind_maxres: float = Field(default=5, gt=0)
    ctffind_minres: float = Field(default=30, gt=0)
    ctffind_defocus_min: float = 5000  # Å, positive for underfocus
    ctffind_defocus_max: float = 50000
    ctffind_defocus_step: float = Field(default=500, ge=1)
    ctffind_do_phaseshift: bool = False
    ctffind_mpi: int = Field(default=8, ge=1, le=INT_MAX)
    ctffind_submit_to_queue: bool = False
    # --- Picking (relion_it's LoG picker; the reference options go into AutoPick's job.star as
    # relion_it passes them, and RELION's LoG picker reads the noise limits).
    autopick_do_LoG: bool = True
    autopick_do_cryolo: bool = False  # Diamond's relion_it; LoG where no crYOLO is configured
    autopick_LoG_diam_min: float = Field(default=150, gt=0)
    autopick_LoG_diam_max: float = Field(default=180, gt=0)
    autopick_LoG_adjust_threshold: float = 0.0
    autopick_LoG_upper_threshold: float = 999.0
    autopick_lowpass: float = 20
    autopick_shrink_factor: float = Field(default=0, ge=0, le=1)
    autopick_refs_threshold: float = 0.4
    autopick_refs_min_distance: float = Field(default=120, ge=0)
    autopick_stddev_noise: float = -1
    autopick_avg_noise: float = -999
    autopick_refs_are_ctf_corrected: bool = True
    autopick_refs_have_inverted_contrast: bool = True
    autopick_refs_ignore_ctf1stpeak: bool = False
    autopick_refs_mask_diam: float = -1
    autopick_inplane_sampling: float = Field(default=10, gt=0)
    autopick_3dref_symmetry: str = Field(default="C1", pattern=SYMMETRY, max_length=10)
    autopick_3dref_sampling: Sampling = "30 degrees"
    autopick_ref_angpix: float = -1
    autopick_do_gpu: bool = True
    autopick_gpu: str = Field(default="0", pattern=GPU_IDS, max_length=80)
    autopick_mpi: int = Field(default=1, ge=1, le=INT_MAX)
    autopick_submit_to_queue: bool = False
    # --- Extraction
    extract_boxsize: int = Field(default=256, gt=0, le=INT_MAX)
    extract_downscale: bool = False
    extract_small_boxsize: int = Field(default=64, gt=0, le=INT_MAX)
    extract_bg_diameter: float = -1
    extract_mpi: int = Field(default=1, ge=1, le=INT_MAX)
    extract_submit_to_queue: bool = False
    # second pass (extract2_job): box sizes as for pass 1, downscaled to its own small box
    extract2_downscale: bool = False
    extract2_small_boxsize: int = Field(default=128, gt=0, le=INT_MAX)
    # --- Batches and classification
    do_class2d: bool = True
    do_class3d: bool = True
    # Diamond's relion_it: choose the 3D reference by FSC ("Best initial model from FSC").
    use_fsc_criterion: bool = False
    do_second_pass: bool = True
    do_class2d_pass2: bool = True
    do_class3d_pass2: bool = False
    # the second pass starts once pass 1's best 3D class of batch 1 is better than this (Å)
    minimum_resolution_3dref_2ndpass: float = Field(default=20, gt=0)
    batch_size_pass2: int = Field(default=100000, ge=1, le=INT_MAX)
    batch_size: int = Field(default=10000, ge=1, le=INT_MAX)
    minimum_batch_size: int = Field(default=10000, ge=0, le=INT_MAX)
    batch_repeat_time: float = Field(default=1, ge=0, description="minutes")
    do_discard_on_image_statistics: bool = False
    discard_sigma: float = Field(default=4, gt=0)
    discard_submit_to_queue: bool = False
    mask_diameter: float = Field(default=190, gt=0)
    symmetry: str = Field(default="C1", pattern=SYMMETRY, max_length=10)
    refine_preread_images: bool = False
    refine_nr_pool: int = Field(default=10, ge=1, le=INT_MAX)
    refine_do_gpu: bool = True
    refine_gpu: str = Field(default="1", pattern=GPU_IDS, max_length=80)
    refine_mpi: int = Field(default=1, ge=1, le=INT_MAX)
    refine_threads: int = Field(default=6, ge=1, le=INT_MAX)
    refine_skip_padding: bool = False
    refine_submit_to_queue: bool = False
    refine_batchsize_for_fast_subsets: int = Field(default=10000, ge=0, le=INT_MAX)
    class2d_nr_classes: int = Field(default=50, ge=1, le=INT_MAX)
    class2d_nr_iter: int = Field(default=20, ge=1, le=INT_MAX)
    class2d_angle_step: float = Field(default=6, gt=0)
    class2d_offset_range: float = Field(default=5, ge=0)
    class2d_offset_step: float = Field(default=1, gt=0)
    class2d_ctf_ign1stpeak: bool = False
    class3d_nr_classes: int = Field(default=4, ge=1, le=INT_MAX)
    class3d_nr_iter: int = Field(default=20, ge=1, le=INT_MAX)
    class3d_ini_lowpass: float = Field(default=40, ge=0)
    class3d_ctf_ign1stpeak: bool = False
    class3d_T_value: float = Field(default=4, gt=0)
    class3d_angle_step: Sampling = "7.5 degrees"
    class3d_offset_range: float = Field(default=5, ge=0)
    class3d_offset_step: float = Field(default=1, gt=0)
    inimodel_nr_classes: int = Field(default=4, ge=1, le=INT_MAX)
    inimodel_ctf_ign1stpeak: bool = False
    inimodel_solvent_flatten: bool = True
    inimodel_angle_step: Sampling = "15 degrees"
    inimodel_offset_range: float = Field(default=6, ge=0)
    inimodel_offset_step: float = Field(default=2, gt=0)
    inimodel_nr_iter_initial: int = Field(default=50, ge=0, le=INT_MAX)
    inimodel_nr_iter_inbetween: int = Field(default=200, ge=0, le=INT_MAX)
    inimodel_nr_iter_final: int = Field(default=50, ge=0, le=INT_MAX)
    inimodel_freq_writeout: int = Field(default=10, ge=1, le=INT_MAX)
    inimodel_resol_ini: float = Field(default=35, gt=0)
    inimodel_resol_final: float = Field(default=15, gt=0)
    inimodel_batchsize_ini: int = Field(default=100, ge=1, le=INT_MAX)
    inimodel_batchsize_final: int = Field(default=500, ge=1, le=INT_MAX)
    inimodel_sigmafudge_halflife: float = -1
    # --- The cluster queue (the site's ``queue``, stages.check_queue): a job chooses among
    # the site's queues; the submit command and template are the site's, and a job may only
    # repeat them (relion_it's own defaults name an SGE site's).
    queue_name: str | None = Field(default=None, pattern=QUEUE_NAME)
    queue_submit_command: str | None = Field(default=None, max_length=VALUE_LENGTH)
    queue_submission_template: str | None = Field(default=None, max_length=VALUE_LENGTH)
    queue_minimum_dedicated: int | None = Field(default=None, ge=1, le=64)
    # --- Not applicable here (NOT_APPLICABLE): accepted and stored, never passed on.
    acquisition_software: str | None = Field(default=None, max_length=80)

    # The text each given key was given as (stripped), for the rows ISPyB stores.
    _given: dict[str, str] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RelionItParameters):
            return NotImplemented
        return self.__dict__ == other.__dict__

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
        if not ends_in_movie_suffix(value):
            raise ValueError(f"must end in a movie suffix ({', '.join(MOVIE_SUFFIXES)})")
        return value

    @field_validator("motioncor_gainreference", "motioncor_defectfile")
    @classmethod
    def _shell_safe_path(cls, value: str) -> str:
        reason = unsafe_reason(value) if value else None
        if reason:
            raise ValueError(reason)
        return value

    @field_validator("extract_boxsize")
    @classmethod
    def _even_box(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (RELION extracts even-sized boxes only)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RelionItParameters:
        if self.ctffind_minres <= self.ctffind_maxres:
            raise ValueError("ctffind_minres must be larger than ctffind_maxres (both in Å)")
        if self.ctffind_defocus_min > self.ctffind_defocus_max:
            raise ValueError("ctffind_defocus_min must not be above ctffind_defocus_max")
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


def _checked_text(key: str, text: str) -> str:
    """What pydantic is to read for ``text``: refuse what Python would read but a person did not
    mean (``1_0``, ``nan``, ``yes`` for a boolean) and ``300.0`` for a whole number becomes 300."""
    kind = FIELDS[key].annotation
    if kind is bool:
        if text.lower() not in BOOL_TEXT:
            raise ParameterError(key, f"is not a boolean: 1, 0, true or false (got {text!r})")
        return text.lower()
    if kind not in (int, float):
        return text
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise ParameterError(key, f"must be a finite number (got {text!r})")
    if kind is float and not FLOAT_TEXT.match(text):
        raise ParameterError(key, f"is not a number (got {text!r})")
    if kind is int:
        if not INT_TEXT.match(text):
            raise ParameterError(key, f"is not a whole number (got {text!r})")
        text = text.split(".")[0]
    return text


def to_text(value: Any) -> str:
    """The text of a value given from code: ``300`` -> "300", ``True`` -> "true", strings as
    they are. ``parse`` reads it back to the same value."""
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


def parse(pairs: Iterable[tuple[str, Any]] | Mapping[str, Any],
          defaults: Mapping[str, Any] | None = None) -> RelionItParameters:
    """Type and check parameters given as (key, value) pairs; values may be strings.
    ``defaults`` (the site file's ``relion_it_defaults``) stand in for keys not given, before
    relion_it's own defaults.

    The result remembers each value's text, stripped of surrounding blanks: ``explicit_items``
    gives it back for ISPyB (never a site default: only what the user gave is stored)."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    given: dict[str, str] = {}
    raw: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise ParameterError(None, f"parameter keys must be non-empty strings, got {key!r}")
        if key in NOT_TAKEN:
            raise ParameterError(key, f"a relion_it 3.1 option relion_zo does not take: "
                                 f"{NOT_TAKEN[key]}")
        if key not in FIELDS:
            raise ParameterError(key, "unknown key (relion_it option names only)")
        if key in raw:
            raise ParameterError(key, "given more than once")
        if value is None:
            raise ParameterError(key, "has no value")
        text = to_text(value).strip()
        if len(text) > VALUE_LENGTH:
            raise ParameterError(key, f"value longer than {VALUE_LENGTH} characters")
        given[key] = text
        raw[key] = _checked_text(key, text)
    from_defaults: dict[str, str] = {}
    for key, value in (defaults or {}).items():
        if key not in raw:
            from_defaults[key] = to_text(value).strip()
            raw[key] = _checked_text(key, from_defaults[key])
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ParameterError(missing[0], "is required" + (
            f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    try:
        params = RelionItParameters.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        shown = given.get(key or "", from_defaults.get(key or "", ""))
        msg = first["msg"].removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
        raise ParameterError(key, f"{msg} (got {shown!r})" if key else msg) from None
    params._given = given
    return params


def check_defaults(defaults: Mapping[str, Any]) -> None:
    """Site defaults must type and range-check like any value (with made-up required keys)."""
    stand_ins = {key: "1" for key in REQUIRED if key not in defaults}
    parse(stand_ins, defaults)


def explicit_items(params: RelionItParameters) -> list[tuple[str, str]]:
    """The keys a user set, as the strings ISPyB stores, in schema order: the text each was
    given as (from ``parse``), else the text of its value."""
    given = params._given
    if given:
        return [(k, given[k]) for k in FIELDS if k in given]
    return [(k, to_text(getattr(params, k))) for k in FIELDS if k in params.model_fields_set]
