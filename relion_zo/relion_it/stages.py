"""Which RELION jobs a set of parameters asks for, their ``--addJobOptions``, and whether this
site can run them. Labels are RELION 3.1's own job-option labels."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from relion_zo.config import SiteConfig
from relion_zo.errors import InputError
from relion_zo.parameters import ParameterError, RelionItParameters
from relion_zo.paths import unsafe_reason
from relion_zo.relion_it.batches import Reference


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
    alias: str | None = None  # relion_it's --setJobAlias, if it gives one
    # What its rows count: "movies" (one per movie, compared with Import's count to tell
    # whether every movie went through it), "picked" (one per movie, and the particles picked
    # in each, _rlnGroupNrParticles), or "" (not counted).
    counts: str = "movies"


SUBMIT_TO_QUEUE = ("motioncor_submit_to_queue", "ctffind_submit_to_queue",
                   "autopick_submit_to_queue", "extract_submit_to_queue",
                   "discard_submit_to_queue", "refine_submit_to_queue")
GCTF_GPU = "0"  # relion_it's gctf_gpu: unused with CTFFIND, but in its job.star
# relion_it 3.1's inimodel_other_args default (628), blanks and all: InitialModel's only
# additional argument (a job cannot give free-form arguments)
INIMODEL_ARGS = " --sgd_skip_anneal "


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


def picks(p: RelionItParameters) -> bool:
    """relion_it 3.1 goes on to pick particles unless it stops after CTF estimation (relion_zo's
    stop after motion correction stops earlier still)."""
    return not (p.stop_after_ctf_estimation or p.stop_after_motion_correction)


def classifies(p: RelionItParameters, *, second: bool = False) -> bool:
    """Batches and 2D/3D classification in relion_it's first pass, or its second (1742, 1775)."""
    if second:
        return picks(p) and (p.do_class2d_pass2 or p.do_class3d_pass2)
    return picks(p) and (p.do_class2d or p.do_class3d)


def second_pass(p: RelionItParameters) -> bool:
    """relion_it moves on to a second pass only from pass 1's Class3D (2084)."""
    return classifies(p) and p.do_class3d and p.do_second_pass


def check_stages(params: RelionItParameters) -> None:
    """Refuse a job that asks for a stage relion_zo does not run yet, naming it.

    Such a job parses (its stored rows stay readable); this is the one check that refuses it,
    before anything is written or run."""
    p = params
    if not picks(p):
        return
    if not p.autopick_do_LoG:
        raise ParameterError(
            "autopick_do_LoG", "picking with references needs reference files, which a job "
            "cannot name yet: set autopick_do_LoG=true (Laplacian-of-Gaussian picking)")


def check_capabilities(params: RelionItParameters, config: SiteConfig) -> None:
    """Refuse, before anything is written or run, what this site or relion_zo cannot do."""
    check_stages(params)
    check_queue(params, config)
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
    if uses_cryolo(params, config):
        cryolo_program(config)  # raises when crYOLO, its model or the job program is missing
    if not shutil.which("csh"):
        raise InputError("RELION's CTFFIND wrapper needs csh, which is not installed here")


CRYOLO_JOB = "relion-zo-cryolo-job"  # the External job's program (relion_it/cryolo_job.py)


QUEUE_KEYS = ("queue_name", "queue_submit_command", "queue_submission_template",
              "queue_minimum_dedicated")


def check_queue(p: RelionItParameters, config: SiteConfig) -> None:
    """A job may send RELION's jobs to the site's queue and choose among its queues; the
    command and template that RELION runs through a shell are the site's alone."""
    queue = config.queue
    if queue is None:
        for key in (*SUBMIT_TO_QUEUE, *QUEUE_KEYS):
            if key in p.model_fields_set and getattr(p, key) not in (None, False):
                raise InputError(f"parameter {key}: queue submission is not configured at "
                                 "this site; leave it out")
        return
    if p.queue_name is not None and p.queue_name not in queue.names:
        raise InputError(f"parameter queue_name: {p.queue_name!r} is not a queue of this site "
                         f"(queue.names: {', '.join(queue.names)})")
    for key, site_value, setting in (
            ("queue_submit_command", queue.submit_command, "queue.submit_command"),
            ("queue_submission_template", queue.template(), "queue.submission_template")):
        value = getattr(p, key)
        if value is not None and value != site_value:
            raise InputError(f"parameter {key}: the site sets it ({setting}: {site_value}); "
                             "leave it out")
    if any(getattr(p, key) for key in SUBMIT_TO_QUEUE) and not os.path.isfile(queue.template()):
        raise InputError(f"the site's submission template is missing "
                         f"(queue.submission_template: {queue.template()})")


def with_queue(p: RelionItParameters, config: SiteConfig) -> RelionItParameters:
    """``p`` with the site's queue settings where the job leaves them out (check_queue has
    refused any other): what relion_it's queue options carry into each job.star."""
    queue = config.queue
    if queue is None:
        return p
    update = {"queue_name": p.queue_name or queue.names[0],
              "queue_submit_command": queue.submit_command,
              "queue_submission_template": queue.template(),
              "queue_minimum_dedicated": p.queue_minimum_dedicated or queue.minimum_dedicated}
    filled = p.model_copy(update=update)
    filled._given = dict(p._given)
    return filled


def queue_options(p: RelionItParameters, submit: bool, *, always: bool = False
                  ) -> list[tuple[str, object]]:
    """relion_it's queue options (1504-1508), for a job whose ``*_submit_to_queue`` is set;
    otherwise "Submit to queue? No" where relion_zo has always written it (``always``)."""
    if not submit:
        return [("Submit to queue?", False)] if always else []
    return [("Submit to queue?", True),
            ("Queue name: ", p.queue_name),
            ("Queue submit command:", p.queue_submit_command),
            ("Standard submission script:", p.queue_submission_template),
            ("Minimum dedicated cores per node:", p.queue_minimum_dedicated)]


def uses_cryolo(p: RelionItParameters, config: SiteConfig) -> bool:
    """Pass 1 picks with crYOLO when the job asks (``autopick_do_cryolo``, Diamond's relion_it
    option, which PATo's form ticks) and the site names crYOLO; else with LoG."""
    return picks(p) and p.autopick_do_cryolo and bool(config.executables.cryolo)


def cryolo_program(config: SiteConfig) -> str:
    """The External job's program, once crYOLO and its model are found at this site."""
    cryolo = config.executables.cryolo
    if not _executable(cryolo):
        raise InputError(
            f"crYOLO ({cryolo}) is not installed here (executables.cryolo); set "
            "autopick_do_cryolo=false to pick with LoG")
    weights = config.cryolo_weights
    if not weights or not os.path.isfile(weights) or not os.access(weights, os.R_OK):
        raise InputError(
            f"crYOLO's model (cryolo_weights: {weights}) is not a readable file at this site; "
            "set autopick_do_cryolo=false to pick with LoG")
    program = _executable(CRYOLO_JOB)
    if not program or unsafe_reason(program):
        raise InputError(f"{CRYOLO_JOB} is not installed here with a safe path (pip install "
                         "relion_zo)")
    return program


def cryolo_stage(p: RelionItParameters, config: SiteConfig) -> Stage:
    """crYOLO picking as RELION's External job, under relion_it's ``autopick_job`` name, with
    AutoPick's outputs (relion_it/cryolo_job.py). Its box is the particle's largest diameter
    in the micrographs' pixels (crYOLO's box encloses the particle)."""
    box = max(1, round(p.autopick_LoG_diam_max / (p.angpix * p.motioncor_binning)))
    params = [("box_size", box), ("threshold", config.cryolo_threshold),
              ("cryolo", config.executables.cryolo), ("weights", config.cryolo_weights),
              ("gpu", p.autopick_gpu or "0")]  # crYOLO's default device
    options: list[tuple[str, object]] = [
        ("External executable:", cryolo_program(config)),
        ("Input micrographs: ", JobRef("ctffind_job", "micrographs_ctf.star")),
    ]
    for number, (label, value) in enumerate(params, start=1):
        options += [(f"Param{number} - label:", label), (f"Param{number} - value:", value)]
    options.append(("Number of threads:", 1))
    options += queue_options(p, p.autopick_submit_to_queue)
    return Stage("autopick_job", "External", "AutoPick (crYOLO)", "summary.star", "",
                 tuple(options), alias="pass 1", counts="picked")


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
        *queue_options(p, p.motioncor_submit_to_queue, always=True),
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
                    *queue_options(p, p.ctffind_submit_to_queue, always=True),
                ),
            )
        )
    if picks(p):
        result += picking_stages(p, cryolo=cryolo_stage(p, config)
                                 if uses_cryolo(p, config) else None)
    return result


def picking_stages(p: RelionItParameters, reference: Reference | None = None, *,
                   cryolo: Stage | None = None) -> list[Stage]:
    """AutoPick, Extract and, when classifying, the Select job that splits the particles into
    batches: relion_it's jobs after CtfFind (1641-1760). Pass 1 picks with LoG, or with
    crYOLO (``cryolo``, its External job); the second pass (``reference`` given) picks with
    pass 1's best 3D class, extracts to its own small box and splits into batches of
    ``batch_size_pass2``."""
    second = reference is not None
    autopick = Stage(
        # summary.star (RELION 3.1's AutoPick writes it after each run): a row per movie
        "autopick2_job" if second else "autopick_job", "AutoPick",
        "AutoPick pass 2" if second else "AutoPick", "summary.star", "",
        (
            ("Input micrographs for autopick:", JobRef("ctffind_job", "micrographs_ctf.star")),
            ("Min. diameter for LoG filter (A)", p.autopick_LoG_diam_min),
            ("Max. diameter for LoG filter (A)", p.autopick_LoG_diam_max),
            ("Maximum resolution to consider (A)", p.autopick_lowpass),
            ("Adjust default threshold (stddev):", p.autopick_LoG_adjust_threshold),
            ("Upper threshold (stddev):", p.autopick_LoG_upper_threshold),
            ("2D references:", ""),
            ("3D reference:", reference.map if second else ""),
            # relion_it picks pass 2 with the particle's symmetry (2090)
            ("Symmetry:", p.symmetry if second else p.autopick_3dref_symmetry),
            ("Pixel size in references (A)", reference.angpix if second
             else p.autopick_ref_angpix),
            ("3D angular sampling:", p.autopick_3dref_sampling),
            ("In-plane angular sampling (deg)", p.autopick_inplane_sampling),
            ("Picking threshold:", p.autopick_refs_threshold),
            ("Minimum inter-particle distance (A):", p.autopick_refs_min_distance),
            ("Mask diameter (A)", p.autopick_refs_mask_diam),
            ("Maximum stddev noise:", p.autopick_stddev_noise),
            ("Minimum avg noise:", p.autopick_avg_noise),
            ("Shrink factor:", p.autopick_shrink_factor),
            ("Which GPUs to use:", p.autopick_gpu),
            ("Additional arguments:", ""),
            ("Number of MPI procs:", p.autopick_mpi),
            ("OR: provide a 3D reference?", second),
            ("OR: use Laplacian-of-Gaussian?", not second),
            ("Are References CTF corrected?", p.autopick_refs_are_ctf_corrected),
            ("References have inverted contrast?", p.autopick_refs_have_inverted_contrast),
            ("Ignore CTFs until first peak?", p.autopick_refs_ignore_ctf1stpeak),
            # relion_it: only for reference-based picking
            ("Use GPU acceleration?", second and p.autopick_do_gpu),
            *queue_options(p, p.autopick_submit_to_queue),
        ),
        alias="pass 2" if second else "pass 1", counts="picked",
    )
    if cryolo is not None and not second:
        autopick = cryolo
    downscale, small_box = ((p.extract2_downscale, p.extract2_small_boxsize) if second
                            else (p.extract_downscale, p.extract_small_boxsize))
    extract = [
        ("Input coordinates: ", JobRef(autopick.name_in_script, "coords_suffix_autopick.star")),
        ("micrograph STAR file: ", JobRef("ctffind_job", "micrographs_ctf.star")),
        ("Diameter background circle (pix): ", p.extract_bg_diameter),
        ("Particle box size (pix):", p.extract_boxsize),
        ("Number of MPI procs:", p.extract_mpi),
    ]
    if downscale:
        extract += [("Rescale particles?", True), ("Re-scaled size (pixels): ", small_box)]
    extract += queue_options(p, p.extract_submit_to_queue)
    extract_name = "extract2_job" if second else "extract_job"
    result = [
        autopick,
        Stage(extract_name, "Extract", "Extract pass 2" if second else "Extract",
              "particles.star", "particles", tuple(extract), alias=autopick.alias, counts=""),
    ]
    if classifies(p, second=second):
        size = p.batch_size_pass2 if second else p.batch_size
        result.append(Stage(
            "split2_job" if second else "split_job", "Select", "Select", "", "",
            (
                ("OR select from particles.star:", JobRef(extract_name, "particles.star")),
                ("OR: split into subsets?", True),
                ("OR: number of subsets: ", -1),
                ("Subset size: ", size),
            ),
            alias=f"into {size}", counts="",
        ))
    return result


def rescaled_reference(p: RelionItParameters, reference: Reference) -> tuple[str, float, int]:
    """The second pass's Class3D reference, as relion_it makes it (1779-1793): pass 1's best
    class at the second pass's particle pixel size, ``<map>_rescaled.mrc`` in a box of its
    particles' size; returns (file, pixel size, box). When neither pass downscales, or the
    sizes already agree (within 0.01 Å), the map itself with no rescaling (box 0)."""
    if not (p.extract_downscale or p.extract2_downscale):
        return reference.map, 0.0, 0
    angpix = p.angpix * p.motioncor_binning
    if p.extract2_downscale:
        angpix = angpix * p.extract_boxsize / p.extract2_small_boxsize
        box = p.extract2_small_boxsize
    else:
        box = p.extract_boxsize
    if abs(angpix - float(reference.angpix)) <= 0.01:
        return reference.map, 0.0, 0
    return reference.map.replace(".mrc", "_rescaled.mrc"), angpix, box


@dataclass(frozen=True)
class BatchPlan:
    """relion_it 3.1's batch jobs (1775-2115): per batch of extracted particles an optional
    discard Select job, Class2D, and with ``do_class3d`` an InitialModel (once, on batch 1 when
    it is full) and Class3D. The second pass (``second``) has its own names, its own
    ``do_class2d_pass2``/``do_class3d_pass2`` and ``batch_size_pass2``, and no InitialModel:
    its Class3D starts from pass 1's best class. The options are relion_it's, label for label."""

    params: RelionItParameters
    second: bool = False

    @property
    def full_size(self) -> int:
        """A batch this size is full. relion_it 3.1 compares pass 2's batches with
        ``batch_size`` too (1818), which its batches of ``batch_size_pass2`` reach only by
        chance: relion_zo compares them with ``batch_size_pass2``, as they are split."""
        return self.params.batch_size_pass2 if self.second else self.params.batch_size

    @property
    def do_class2d(self) -> bool:
        return self.params.do_class2d_pass2 if self.second else self.params.do_class2d

    @property
    def do_class3d(self) -> bool:
        return self.params.do_class3d_pass2 if self.second else self.params.do_class3d

    @property
    def first_class2d(self) -> str:
        """The name whose record tells a restart that batch 1 was classified before."""
        return self._names(1)[0]

    def _names(self, batch: int) -> tuple[str, str, str]:
        """(Class2D's name, Class3D's name, their alias) for ``batch``, as relion_it has them."""
        if self.second:
            return (f"class2d_pass2_job_batch_{batch:03d}", f"class3d2_job_batch_{batch:03d}",
                    f"pass2_batch_{batch:03d}")
        return (f"class2d_job_batch_{batch:03d}", f"class3d_job_batch_{batch:03d}",
                f"pass1_batch_{batch:03d}")

    def _label(self, label: str) -> str:
        return f"{label} pass 2" if self.second else label

    def _refine(self) -> list[tuple[str, object]]:
        p = self.params
        return [
            ("Which GPUs to use:", p.refine_gpu),
            ("Number of MPI procs:", p.refine_mpi),
            ("Number of threads:", p.refine_threads),
            ("Copy particles to scratch directory:", ""),
            ("Use GPU acceleration?", p.refine_do_gpu),
            ("Pre-read all particles into RAM?", p.refine_preread_images),
            *queue_options(p, p.refine_submit_to_queue, always=True),
        ]

    def discard(self, batch_file: str) -> Stage:
        return Stage(
            "discard2_job" if self.second else "discard_job", "Select",
            self._label("Discard"), "particles.star", "particles",
            (
                ("OR select from particles.star:", batch_file),
                ("OR: select on image statistics?", True),
                ("Sigma-value for discarding images:", self.params.discard_sigma),
                ("Metadata label for images:", "rlnImageName"),
                *queue_options(self.params, self.params.discard_submit_to_queue),
            ),
            counts="",
        )

    def class2d(self, batch: int, particles: str, batch_size: int) -> Stage:
        p = self.params
        name, _, alias = self._names(batch)
        return Stage(
            name, "Class2D", self._label("Class2D"), "", "",
            (
                ("Input images STAR file:", particles),
                ("Number of classes:", p.class2d_nr_classes),
                ("Mask diameter (A):", p.mask_diameter),
                ("Number of iterations:", p.class2d_nr_iter),
                ("Angular search range - psi (deg):", p.class2d_angle_step),
                ("Offset search range (pix):", p.class2d_offset_range),
                ("Offset search step (pix):", p.class2d_offset_step),
                ("Number of pooled particles:", p.refine_nr_pool),
                ("Additional arguments:", ""),
                ("Use fast subsets (for large data sets)?",
                 batch_size > p.refine_batchsize_for_fast_subsets),
                ("Ignore CTFs until first peak?", p.class2d_ctf_ign1stpeak),
                *self._refine(),
            ),
            alias=alias, counts="",
        )

    def inimodel(self, particles: str) -> Stage:
        p = self.params
        return Stage(
            "inimodel", "InitialModel", "InitialModel", "", "",
            (
                ("Input images STAR file:", particles),
                ("Symmetry:", p.symmetry),
                ("Mask diameter (A):", p.mask_diameter),
                ("Number of classes:", p.inimodel_nr_classes),
                ("Initial angular sampling:", p.inimodel_angle_step),
                ("Offset search range (pix):", p.inimodel_offset_range),
                ("Offset search step (pix):", p.inimodel_offset_step),
                ("Number of initial iterations:", p.inimodel_nr_iter_initial),
                ("Number of in-between iterations:", p.inimodel_nr_iter_inbetween),
                ("Number of final iterations:", p.inimodel_nr_iter_final),
                ("Write-out frequency (iter):", p.inimodel_freq_writeout),
                ("Initial resolution (A):", p.inimodel_resol_ini),
                ("Final resolution (A):", p.inimodel_resol_final),
                ("Initial mini-batch size:", p.inimodel_batchsize_ini),
                ("Final mini-batch size:", p.inimodel_batchsize_final),
                ("Increased noise variance half-life:", p.inimodel_sigmafudge_halflife),
                ("Number of pooled particles:", 1),
                # relion_it's default " --sgd_skip_anneal " (inimodel_other_args); free-form
                # arguments are not taken from a job, so relion_it's default is what runs
                ("Additional arguments:", INIMODEL_ARGS),
                ("Flatten and enforce non-negative solvent?", p.inimodel_solvent_flatten),
                ("Skip padding?", p.refine_skip_padding),
                ("Ignore CTFs until first peak?", p.inimodel_ctf_ign1stpeak),
                *self._refine(),
            ),
            counts="",
        )

    def class3d(self, batch: int, particles: str, batch_size: int, reference: str) -> Stage:
        p = self.params
        _, name, alias = self._names(batch)
        return Stage(
            name, "Class3D", self._label("Class3D"), "", "",
            (
                ("Input images STAR file:", particles),
                ("Reference map:", reference),
                ("Initial low-pass filter (A):", p.class3d_ini_lowpass),
                ("Symmetry:", p.symmetry),
                ("Regularisation parameter T:", p.class3d_T_value),
                ("Reference mask (optional):", ""),
                ("Number of classes:", p.class3d_nr_classes),
                ("Mask diameter (A):", p.mask_diameter),
                ("Number of iterations:", p.class3d_nr_iter),
                ("Angular sampling interval:", p.class3d_angle_step),
                ("Offset search range (pix):", p.class3d_offset_range),
                ("Offset search step (pix):", p.class3d_offset_step),
                ("Number of pooled particles:", p.refine_nr_pool),
                ("Additional arguments:", ""),
                ("Use fast subsets (for large data sets)?",
                 batch_size > p.refine_batchsize_for_fast_subsets),
                # relion_it sets both once InitialModel made the reference (1986-1988); pass
                # 2's reference is a map of pass 1's Class3D
                ("Ref. map is on absolute greyscale?", True),
                ("Has reference been CTF-corrected?", True),
                ("Skip padding?", p.refine_skip_padding),
                ("Ignore CTFs until first peak?", p.class3d_ctf_ign1stpeak),
                *self._refine(),
            ),
            alias=alias, counts="",
        )
