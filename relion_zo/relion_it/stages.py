"""Which RELION jobs a set of parameters asks for, their ``--addJobOptions``, and whether this
site can run them. Labels are RELION 3.1's own job-option labels."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from relion_zo.config import SiteConfig
from relion_zo.errors import InputError
from relion_zo.parameters import ParameterError, RelionItParameters


@dataclass(frozen=True)
class JobRef:
    """An option whose value is a file of an earlier job, known once that job is added."""

    name_in_script: str
    filename: str

    def resolve(self, jobs: dict[str, str]) -> str:
        return f"{jobs[self.name_in_script]}{self.filename}"


@dataclass(frozen=True)
class Stage:
    name_in_script: str  # the key in RELION_IT_SUBMITTED_JOBS, as relion_it names it
    job_type: str  # relion_pipeliner --addJob type
    label: str  # for progress messages
    output_star: str  # file in the job folder that lists what it produced
    output_block: str  # STAR block whose rows count the items
    options: tuple[tuple[str, object], ...]


GCTF_GPU = "0"  # relion_it's gctf_gpu: unused with CTFFIND, but in its job.star


def power_spectra(p: RelionItParameters) -> bool:
    """relion_it saves MotionCorr's power spectra and has CTFFIND use them when RELION's own
    motion correction meets CTFFIND. Two departures, both where relion_it would fail: not
    with MotionCor2 (relion_it still asks CtfFind for spectra nobody wrote), and not when the
    job stops after motion correction (relion_zo's own key; no CTF to estimate, and RELION's
    512-pixel spectra fail on small movies)."""
    return p.motioncor_do_own and p.use_ctffind_instead and not p.stop_after_motion_correction


def _executable(value: str | None) -> str | None:
    if not value:
        return None
    found = shutil.which(value)
    return found if found and os.access(found, os.X_OK) else None


def check_stages(params: RelionItParameters) -> None:
    """Refuse a job that asks for a stage relion_zo does not run yet, naming the first one.

    Such a job parses (a web UI's default asks for the whole pipeline), so its stored rows stay
    readable; this is the one check that refuses it, before anything is written or run."""
    if not (params.stop_after_ctf_estimation or params.stop_after_motion_correction):
        raise ParameterError(
            "stop_after_ctf_estimation",
            # relion_it 3.1's run_pipeline picks particles next, whatever the other keys say
            "relion_zo runs Import, MotionCorr and CtfFind; this job asks for AutoPick (particle "
            "picking), which relion_zo does not run yet: set stop_after_ctf_estimation=true",
        )


def check_capabilities(params: RelionItParameters, config: SiteConfig) -> None:
    """Refuse, before anything is written or run, what this site or relion_zo cannot do."""
    check_stages(params)
    for key in ("motioncor_submit_to_queue", "ctffind_submit_to_queue"):
        if getattr(params, key):
            raise InputError(f"parameter {key}: queue submission is not configured at this site")
    if not _executable(config.executables.relion_pipeliner):
        raise InputError(
            f"relion_pipeliner ({config.executables.relion_pipeliner}) is not installed here"
        )
    if not params.motioncor_do_own and not _executable(config.executables.motioncor2):
        raise InputError(
            "MotionCor2 is not available at this site (executables.motioncor2: "
            f"{config.executables.motioncor2}); set motioncor_do_own=true for RELION's own "
            "motion correction"
        )
    if params.stop_after_motion_correction:
        return
    if not params.use_ctffind_instead:
        raise InputError("parameter use_ctffind_instead: Gctf is not supported; use CTFFIND 4.1")
    if not _executable(config.executables.ctffind):
        raise InputError(
            f"ctffind is not available at this site (executables.ctffind: "
            f"{config.executables.ctffind}); name CTFFIND 4.1 there (or, where it cannot be "
            "installed, relion-zo-ctffind-aspire: docs/ctffind-standin.md), or set "
            "stop_after_motion_correction=true to stop after motion correction"
        )
    if not shutil.which("csh"):
        raise InputError("RELION's CTFFIND wrapper needs csh, which is not installed here")


def stages(
    params: RelionItParameters, config: SiteConfig, import_images: str, gain: str,
    defect: str = "",
) -> list[Stage]:
    """The preprocessing jobs, in order. Job names are filled in as the pipeline grows."""
    p = params
    result = [
        Stage(
            "import_job", "Import", "Import", "movies.star", "movies",
            (
                ("Import raw movies/micrographs?", True),
                ("Raw input files:", import_images),
                ("Are these multi-frame movies?", True),
                ("Optics group name:", "opticsGroup1"),
                ("Pixel size (Angstrom):", p.angpix),
                ("Voltage (kV):", p.voltage),
                ("Spherical aberration (mm):", p.Cs),
                ("Amplitude contrast:", p.ampl_contrast),
            ),
        )
    ]
    motioncor = [
        ("Input movies STAR file:", JobRef("import_job", "movies.star")),
        ("First frame for corrected sum:", 1),
        ("Last frame for corrected sum:", -1),
        ("Dose per frame (e/A2):", p.motioncor_doseperframe),
        ("Pre-exposure (e/A2):", 0),
        ("Do dose-weighting?", True),
        ("Save non-dose weighted as well?", False),
        ("Save sum of power spectra?", power_spectra(p)),
        ("Bfactor:", p.motioncor_bfactor),
        ("Number of patches X:", p.motioncor_patches_x),
        ("Number of patches Y:", p.motioncor_patches_y),
        ("Group frames:", 1),
        ("Binning factor:", p.motioncor_binning),
        ("Gain-reference image:", gain),
        ("Gain rotation:", p.motioncor_gainrot),
        ("Gain flip:", p.motioncor_gainflip),
        ("Defect file:", defect),
        ("Use RELION's own implementation?", p.motioncor_do_own),
        ("Number of MPI procs:", p.motioncor_mpi),
        ("Number of threads:", p.motioncor_threads),
        ("Submit to queue?", False),
    ]
    # relion_it passes both always, EER or not (RELION ignores them for other movies); coming
    # last on the command line they win over the job's own EER fractionation (32).
    motioncor.append(("Additional arguments:",
                      f"--eer_upsampling {p.eer_upsampling} --eer_grouping {p.eer_grouping}"))
    # relion_it passes these whichever implementation runs (the job.star matches its own)
    motioncor += [
        ("MOTIONCOR2 executable:", config.executables.motioncor2 or ""),
        ("Which GPUs to use:", p.motioncor_gpu),
    ]
    result.append(
        Stage("motioncorr_job", "MotionCorr", "MotionCorr", "corrected_micrographs.star",
              "micrographs", tuple(motioncor))
    )
    if not p.stop_after_motion_correction:
        result.append(
            Stage(
                "ctffind_job", "CtfFind", "CtfFind", "micrographs_ctf.star", "micrographs",
                (
                    (
                        "Input micrographs STAR file:",
                        JobRef("motioncorr_job", "corrected_micrographs.star"),
                    ),
                    ("Use micrograph without dose-weighting?", False),
                    ("Estimate phase shifts?", p.ctffind_do_phaseshift),
                    ("Amount of astigmatism (A):", p.ctffind_astigmatism),
                    ("FFT box size (pix):", p.ctffind_boxsize),
                    ("Maximum resolution (A):", p.ctffind_maxres),
                    ("Minimum resolution (A):", p.ctffind_minres),
                    ("Minimum defocus value (A):", p.ctffind_defocus_min),
                    ("Maximum defocus value (A):", p.ctffind_defocus_max),
                    ("Defocus step size (A):", p.ctffind_defocus_step),
                    ("Use CTFFIND-4.1?", True),
                    ("Use Gctf instead?", False),
                    ("Which GPUs to use:", GCTF_GPU),
                    ("CTFFIND-4.1 executable:", config.executables.ctffind),
                    ("Use power spectra from MotionCorr job?", power_spectra(p)),
                    ("Use exhaustive search?", False),
                    ("Number of MPI procs:", p.ctffind_mpi),
                    ("Submit to queue?", False),
                ),
            )
        )
    return result
