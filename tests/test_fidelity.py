"""The project is the one RELION 3.1's relion_it.py builds, and relion_zo shares it safely:
relion_it's reading of RELION_IT_SUBMITTED_JOBS, its documented stop, RELION's GUI mark, a
scientist's options file kept, and no second scheduler beside a live one (real RELION)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time

import pytest
from runs import Background, job_status, site_config

from relion_zo.relion_it import options as options_mod
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.driver import live_schedulers, processes_in
from relion_zo.runner import run_job

RUN_LIMIT = 180  # guards against hangs, not speed


def test_submitted_jobs_are_read_as_relion_it_reads_them_and_never_doubled(tmp_path):
    (tmp_path / pl.SUBMITTED_JOBS).write_text(
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job002/\n"
        "import_job = Import/job009/\n")
    assert pl.read_submitted(tmp_path)["import_job"] == "Import/job001/"  # the first line
    (tmp_path / pl.SUBMITTED_JOBS).write_text(
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job002/\n")
    pl.record_submitted(tmp_path, "motioncorr_job", "MotionCorr/job003/")  # added again
    pl.record_submitted(tmp_path, "ctffind_job", "CtfFind/job004/")
    assert (tmp_path / pl.SUBMITTED_JOBS).read_text() == (
        "import_job = Import/job001/\nmotioncorr_job = MotionCorr/job003/\n"
        "ctffind_job = CtfFind/job004/\n")


def test_a_project_opens_in_relions_gui_as_a_project(tmp_path):
    pl.ensure_pipeline(tmp_path)
    pl.ensure_pipeline(tmp_path)  # again: nothing changes, nothing fails
    assert (tmp_path / pl.GUI_PROJECT_MARK).is_file()
    assert (tmp_path / pl.PIPELINE_STAR).read_text() == pl.EMPTY_PIPELINE


def test_a_scientists_options_file_is_kept_before_it_is_replaced(tmp_path):
    path = tmp_path / options_mod.OPTIONS_FILE
    path.write_text("angpix = 0.83\nvoltage = 200\n")  # by hand, for relion_it.py
    when = dt.datetime(2026, 12, 2, 10, 0, 0)
    options_mod.write_options(tmp_path, "# written 10:00\nangpix = 1.0\n", now=when)
    backup = tmp_path / f"{options_mod.OPTIONS_FILE}.bak-20261202-100000"
    assert backup.read_text() == "angpix = 0.83\nvoltage = 200\n"
    assert path.read_text() == "# written 10:00\nangpix = 1.0\n"
    # The same settings written again (a new time stamp only): nothing more is kept.
    options_mod.write_options(tmp_path, "# written 10:05\nangpix = 1.0\n",
                              now=when + dt.timedelta(minutes=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [options_mod.OPTIONS_FILE,
                                                          backup.name]


def test_removing_running_pipeliner_preprocess_stops_the_run(processing_engine, engine,
                                                             tmp_path, stack_settings,
                                                             live_visits):
    """relion_it's documented stop: remove RUNNING_PIPELINER_PREPROCESS."""
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site, movies=12, size=512, frames=8)
    pjid = live.start()
    project = live.project(pjid)
    run = Background(pjid, engine=processing_engine, config=site)
    running = project / f"{pl.RUNNING_PIPELINER}PREPROCESS"
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.exists(), "the pipeliner never started"
    running.unlink()
    outcome = run.join(RUN_LIMIT)
    assert outcome.state == "stopped", outcome.message
    state = job_status(engine, site, pjid)
    assert state.state == "stopped"
    assert "RUNNING_PIPELINER_PREPROCESS was removed" in state.message
    assert processes_in(project) == []


def test_no_second_scheduler_beside_a_live_one(processing_engine, engine, tmp_path,
                                               stack_settings, live_visits):
    """A scientist's relion_pipeliner (RELION's GUI scheduler) in the project: relion_zo's
    resume refuses before it writes anything, and leaves it running."""
    site = site_config(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site)
    pjid = live.start()
    project = live.project(pjid)
    first = Background(pjid, engine=processing_engine, config=site)
    deadline = time.monotonic() + 60
    while not (project / pl.RUNNING_RELION_IT).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (project / pl.RUNNING_RELION_IT).unlink()  # relion_it's own stop: the job is resumable
    assert first.join(RUN_LIMIT).state == "stopped"
    options_before = (project / options_mod.OPTIONS_FILE).read_text()
    log = (tmp_path / "theirs.log").open("w")
    theirs = subprocess.Popen(
        ["relion_pipeliner", "--schedule", "THEIRS", "--repeat", "1000", "--min_wait", "30",
         "--RunJobs", "Import/job001/ "],
        cwd=project, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not live_schedulers(project) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_schedulers(project) == [f"pid {theirs.pid} (relion_pipeliner)"], (
            f"exit {theirs.poll()}: {(tmp_path / 'theirs.log').read_text()[-2000:]}")
        from relion_zo.manager import JobManager
        from relion_zo.runner import environment_text

        program = JobManager(processing_engine, site).new_program(
            pjid, command_line="relion-zo resume", environment=environment_text())
        outcome = run_job(pjid, engine=processing_engine, config=site, program_id=program,
                          resume=True)
        assert outcome.state == "failure"
        assert "another scheduler is running" in outcome.message
        assert f"pid {theirs.pid} (relion_pipeliner)" in outcome.message
        assert theirs.poll() is None, "relion_zo must not stop a scheduler it did not start"
        assert (project / options_mod.OPTIONS_FILE).read_text() == options_before
    finally:
        os.killpg(theirs.pid, signal.SIGKILL)
        theirs.wait()


# relion_it 3.1's rules for its jobs (scripts/relion_it.py 1547-2069, recorded in
# tests/relion_it_3_1.py), as data: (label, value from its options ``o``), by the name relion_it
# records each job under. ``jobs`` maps those names to the jobs added so far.
def _yes(value) -> str:
    return "Yes" if value else "No"


BATCH_FILE = "Select/job006/particles_split1.star"
BATCH_SIZE = 150
REFERENCE = "InitialModel/job009/run_it012_class001.mrc"
# the second pass: pass 1's best 3D class, as relion_it takes it from Class3D's model
BEST_CLASS3D = ("Class3D/job010/run_it005_class002.mrc", "3.000000")
BATCH2_FILE = "Select/job013/particles_split1.star"


def _refine(o) -> list:
    return [("Which GPUs to use:", o["refine_gpu"]), ("Number of MPI procs:", o["refine_mpi"]),
            ("Number of threads:", o["refine_threads"]),
            ("Copy particles to scratch directory:", o["refine_scratch_disk"])]


def _fast(o) -> str:
    return _yes(BATCH_SIZE > o["refine_batchsize_for_fast_subsets"])


RELION_IT_JOBS = {
    "import_job": lambda o, jobs: [
        ("Raw input files:", o["import_images"]),
        ("Import raw movies/micrographs?", "Yes"),
        ("Pixel size (Angstrom):", o["angpix"]),
        ("Voltage (kV):", o["voltage"]),
        ("Spherical aberration (mm):", o["Cs"]),
        ("Amplitude contrast:", o["ampl_contrast"]),
        ("Are these multi-frame movies?", _yes(o["images_are_movies"])),
    ],
    "motioncorr_job": lambda o, jobs: [
        ("Input movies STAR file:", jobs["import_job"] + "movies.star"),
        ("MOTIONCOR2 executable:", o["motioncor_exe"]),
        ("Defect file:", o["motioncor_defectfile"]),
        ("Gain-reference image:", o["motioncor_gainreference"]),
        ("Gain flip:", o["motioncor_gainflip"]),
        ("Gain rotation:", o["motioncor_gainrot"]),
        ("Do dose-weighting?", "Yes"),
        ("Dose per frame (e/A2):", o["motioncor_doseperframe"]),
        ("Number of patches X:", o["motioncor_patches_x"]),
        ("Number of patches Y:", o["motioncor_patches_y"]),
        ("Bfactor:", o["motioncor_bfactor"]),
        ("Binning factor:", o["motioncor_binning"]),
        ("Which GPUs to use:", o["motioncor_gpu"]),
        ("Other MOTIONCOR2 arguments", o["motioncor_other_args"]),
        ("Number of threads:", o["motioncor_threads"]),
        ("Number of MPI procs:", o["motioncor_mpi"]),
        ("Additional arguments:",
         f"--eer_upsampling {o['eer_upsampling']} --eer_grouping {o['eer_grouping']}"),
        ("Use RELION's own implementation?", _yes(o["motioncor_do_own"])),
    ] + ([("Save sum of power spectra?", _yes(o["use_ctffind_instead"]))]
         if o["motioncor_do_own"] else []),
    "ctffind_job": lambda o, jobs: [
        ("Amount of astigmatism (A):", o["ctffind_astigmatism"]),
        ("FFT box size (pix):", o["ctffind_boxsize"]),
        ("Maximum defocus value (A):", o["ctffind_defocus_max"]),
        ("Minimum defocus value (A):", o["ctffind_defocus_min"]),
        ("Defocus step size (A):", o["ctffind_defocus_step"]),
        ("Maximum resolution (A):", o["ctffind_maxres"]),
        ("Minimum resolution (A):", o["ctffind_minres"]),
        ("Gctf executable:", o["gctf_exe"]),
        ("Which GPUs to use:", o["gctf_gpu"]),
        ("CTFFIND-4.1 executable:", o["ctffind4_exe"]),
        ("Number of MPI procs:", o["ctffind_mpi"]),
        ("Input micrographs STAR file:", jobs["motioncorr_job"] + "corrected_micrographs.star"),
        ("Use CTFFIND-4.1?", _yes(o["use_ctffind_instead"])),
        ("Use Gctf instead?", _yes(not o["use_ctffind_instead"])),
        ("Use power spectra from MotionCorr job?", _yes(o["use_ctffind_instead"])),
        ("Estimate phase shifts?", _yes(o["ctffind_do_phaseshift"])),
    ],
    "autopick_job": lambda o, jobs: [
        ("Input micrographs for autopick:", jobs["ctffind_job"] + "micrographs_ctf.star"),
        ("Min. diameter for LoG filter (A)", o["autopick_LoG_diam_min"]),
        ("Max. diameter for LoG filter (A)", o["autopick_LoG_diam_max"]),
        ("Maximum resolution to consider (A)", o["autopick_lowpass"]),
        ("Adjust default threshold (stddev):", o["autopick_LoG_adjust_threshold"]),
        ("Upper threshold (stddev):", o["autopick_LoG_upper_threshold"]),
        ("2D references:", o["autopick_2dreferences"]),
        ("3D reference:", o["autopick_3dreference"]),
        ("Symmetry:", o["autopick_3dref_symmetry"]),
        ("Pixel size in references (A)", o["autopick_ref_angpix"]),
        ("3D angular sampling:", o["autopick_3dref_sampling"]),
        ("In-plane angular sampling (deg)", o["autopick_inplane_sampling"]),
        ("Picking threshold:", o["autopick_refs_threshold"]),
        ("Minimum inter-particle distance (A):", o["autopick_refs_min_distance"]),
        ("Mask diameter (A)", o["autopick_refs_mask_diam"]),
        ("Maximum stddev noise:", o["autopick_stddev_noise"]),
        ("Minimum avg noise:", o["autopick_avg_noise"]),
        ("Shrink factor:", o["autopick_shrink_factor"]),
        ("Which GPUs to use:", o["autopick_gpu"]),
        ("Additional arguments:", o["autopick_other_args"]),
        ("Number of MPI procs:", o["autopick_mpi"]),
        ("OR: provide a 3D reference?", _yes(o["autopick_3dreference"] != "")),
        ("OR: use Laplacian-of-Gaussian?", _yes(o["autopick_do_LoG"])),
        ("Are References CTF corrected?", _yes(o["autopick_refs_are_ctf_corrected"])),
        ("References have inverted contrast?", _yes(o["autopick_refs_have_inverted_contrast"])),
        ("Ignore CTFs until first peak?", _yes(o["autopick_refs_ignore_ctf1stpeak"])),
        ("Use GPU acceleration?", _yes(o["autopick_do_gpu"] and not o["autopick_do_LoG"])),
    ],
    "extract_job": lambda o, jobs, pick="autopick_job": [
        ("Input coordinates: ", jobs[pick] + "coords_suffix_autopick.star"),
        ("micrograph STAR file: ", jobs["ctffind_job"] + "micrographs_ctf.star"),
        ("Diameter background circle (pix): ", o["extract_bg_diameter"]),
        ("Particle box size (pix):", o["extract_boxsize"]),
        ("Number of MPI procs:", o["extract_mpi"]),
    ] + ([("Rescale particles?", "Yes"), ("Re-scaled size (pixels): ", o["extract_small_boxsize"])]
         if o["extract_downscale"] else []),
    "split_job": lambda o, jobs: [
        ("OR select from particles.star:", jobs["extract_job"] + "particles.star"),
        ("OR: split into subsets?", "Yes"),
        ("OR: number of subsets: ", -1),
        ("Subset size: ", o["batch_size"]),
    ],
    "discard_job": lambda o, jobs, batch=BATCH_FILE: [
        ("OR select from particles.star:", batch),
        ("OR: select on image statistics?", "Yes"),
        ("Sigma-value for discarding images:", o["discard_sigma"]),
        ("Metadata label for images:", "rlnImageName"),
    ],
    "class2d_job_batch_001": lambda o, jobs, batch=BATCH_FILE: [
        ("Input images STAR file:", batch),
        ("Number of classes:", o["class2d_nr_classes"]),
        ("Mask diameter (A):", o["mask_diameter"]),
        ("Number of iterations:", o["class2d_nr_iter"]),
        ("Angular search range - psi (deg):", o["class2d_angle_step"]),
        ("Offset search range (pix):", o["class2d_offset_range"]),
        ("Offset search step (pix):", o["class2d_offset_step"]),
        ("Number of pooled particles:", o["refine_nr_pool"]),
        *_refine(o),
        ("Additional arguments:", o["class2d_other_args"]),
        ("Use fast subsets (for large data sets)?", _fast(o)),
        ("Use GPU acceleration?", _yes(o["refine_do_gpu"])),
        ("Ignore CTFs until first peak?", _yes(o["class2d_ctf_ign1stpeak"])),
        ("Pre-read all particles into RAM?", _yes(o["refine_preread_images"])),
    ],
    "inimodel": lambda o, jobs: [
        ("Input images STAR file:", BATCH_FILE),
        ("Symmetry:", o["symmetry"]),
        ("Mask diameter (A):", o["mask_diameter"]),
        ("Number of classes:", o["inimodel_nr_classes"]),
        ("Initial angular sampling:", o["inimodel_angle_step"]),
        ("Offset search range (pix):", o["inimodel_offset_range"]),
        ("Offset search step (pix):", o["inimodel_offset_step"]),
        ("Number of initial iterations:", o["inimodel_nr_iter_initial"]),
        ("Number of in-between iterations:", o["inimodel_nr_iter_inbetween"]),
        ("Number of final iterations:", o["inimodel_nr_iter_final"]),
        ("Write-out frequency (iter):", o["inimodel_freq_writeout"]),
        ("Initial resolution (A):", o["inimodel_resol_ini"]),
        ("Final resolution (A):", o["inimodel_resol_final"]),
        ("Initial mini-batch size:", o["inimodel_batchsize_ini"]),
        ("Final mini-batch size:", o["inimodel_batchsize_final"]),
        ("Increased noise variance half-life:", o["inimodel_sigmafudge_halflife"]),
        ("Number of pooled particles:", 1),
        *_refine(o),
        ("Additional arguments:", o["inimodel_other_args"]),
        ("Flatten and enforce non-negative solvent?", _yes(o["inimodel_solvent_flatten"])),
        ("Skip padding?", _yes(o["refine_skip_padding"])),
        ("Use GPU acceleration?", _yes(o["refine_do_gpu"])),
        ("Ignore CTFs until first peak?", _yes(o["inimodel_ctf_ign1stpeak"])),
        ("Pre-read all particles into RAM?", _yes(o["refine_preread_images"])),
    ],
    # after InitialModel (1986-1988): the reference is its best class, on absolute greyscale
    # and CTF-corrected
    "class3d_job_batch_001": lambda o, jobs, batch=BATCH_FILE: [
        ("Input images STAR file:", batch),
        ("Reference map:", o["class3d_reference"]),
        ("Initial low-pass filter (A):", o["class3d_ini_lowpass"]),
        ("Symmetry:", o["symmetry"]),
        ("Regularisation parameter T:", o["class3d_T_value"]),
        ("Reference mask (optional):", o["class3d_reference_mask"]),
        ("Number of classes:", o["class3d_nr_classes"]),
        ("Mask diameter (A):", o["mask_diameter"]),
        ("Number of iterations:", o["class3d_nr_iter"]),
        ("Angular sampling interval:", o["class3d_angle_step"]),
        ("Offset search range (pix):", o["class3d_offset_range"]),
        ("Offset search step (pix):", o["class3d_offset_step"]),
        ("Number of pooled particles:", o["refine_nr_pool"]),
        *_refine(o),
        ("Additional arguments:", o["class3d_other_args"]),
        ("Use fast subsets (for large data sets)?", _fast(o)),
        ("Ref. map is on absolute greyscale?", "Yes"),
        ("Has reference been CTF-corrected?", "Yes"),
        ("Skip padding?", _yes(o["refine_skip_padding"])),
        ("Use GPU acceleration?", _yes(o["refine_do_gpu"])),
        ("Ignore CTFs until first peak?", _yes(o["class3d_ctf_ign1stpeak"])),
        ("Pre-read all particles into RAM?", _yes(o["refine_preread_images"])),
    ],
}
# The second pass (2084-2096, 1522-1539, 1779-1793): the same rules over options relion_it
# changes in its run once pass 1's Class3D is good enough (pass2_options below).
RELION_IT_JOBS.update({
    "autopick2_job": RELION_IT_JOBS["autopick_job"],
    "extract2_job": lambda o, jobs: RELION_IT_JOBS["extract_job"](
        {**o, "extract_downscale": o["extract2_downscale"],
         "extract_small_boxsize": o["extract2_small_boxsize"]}, jobs, "autopick2_job"),
    "split2_job": lambda o, jobs: [
        ("OR select from particles.star:", jobs["extract2_job"] + "particles.star"),
        ("OR: split into subsets?", "Yes"),
        ("OR: number of subsets: ", -1),
        ("Subset size: ", o["batch_size_pass2"]),
    ],
    "discard2_job": lambda o, jobs: RELION_IT_JOBS["discard_job"](o, jobs, BATCH2_FILE),
    "class2d_pass2_job_batch_001": lambda o, jobs: RELION_IT_JOBS["class2d_job_batch_001"](
        o, jobs, BATCH2_FILE),
    "class3d2_job_batch_001": lambda o, jobs: RELION_IT_JOBS["class3d_job_batch_001"](
        o, jobs, BATCH2_FILE),
})


def pass2_options(o: dict) -> dict:
    """relion_it's options once it moves on to the second pass (2085-2091), and its Class3D
    reference rescaled to the second pass's particles (1779-1793)."""
    o = {**o, "autopick_3dreference": BEST_CLASS3D[0], "autopick_ref_angpix": BEST_CLASS3D[1],
         "autopick_2dreferences": "", "autopick_do_LoG": False,
         "class3d_reference": BEST_CLASS3D[0], "have_3d_reference": True,
         "autopick_3dref_symmetry": o["symmetry"]}
    if o["extract_downscale"] or o["extract2_downscale"]:
        angpix = o["angpix"] * o["motioncor_binning"]
        if o["extract2_downscale"]:
            angpix = angpix * o["extract_boxsize"] / o["extract2_small_boxsize"]
        if abs(float(angpix) - float(o["autopick_ref_angpix"])) > 0.01:
            o["class3d_reference"] = o["autopick_3dreference"].replace(".mrc", "_rescaled.mrc")
    return o


# Where relion_zo's project still differs from relion_it's for these options: nowhere.
KNOWN_DIFFERENCES: set[tuple[str, str]] = set()


def _job_star(path) -> dict[str, str]:
    values = {}
    rows = pl._loop_rows(path.read_text(), "joboptions_values")
    for row in rows:
        values[row[0]] = " ".join(row[1:]).strip('"')
    return values


def with_queue_options(job: str, o: dict, values: list) -> list:
    """relion_it's queue options after a job's own, when its ``*_submit_to_queue`` is set."""
    from relion_it_3_1 import QUEUE_OPTIONS, SUBMIT_TO_QUEUE_OPTION

    flag = SUBMIT_TO_QUEUE_OPTION.get(job.split("_job")[0])
    if not (flag and o[flag]):
        return values
    return values + [(label, "Yes" if key == "'Yes'" else o[key]) for label, key in QUEUE_OPTIONS]


@pytest.mark.parametrize("what", ["preprocessing", "picking and classification",
                                  "second pass", "through the queue"])
def test_the_job_star_files_are_relion_its_for_the_same_options(tmp_path, what):
    """relion_zo's jobs, and the ones relion_it 3.1 adds from relion_zo's own
    relion_it_options.py, added by RELION's relion_pipeliner in two projects: the same
    job.star values, label by label. Every first-pass job relion_it adds is compared, the
    batch jobs with a discard step too."""
    from conftest import GOOD_PARAMS
    from relion_it_3_1 import OPTIONS

    from relion_zo import parameters
    from relion_zo.config import Executables, Queue, SiteConfig
    from relion_zo.relion_it.batches import Reference
    from relion_zo.relion_it.calculate import with_calculated
    from relion_zo.relion_it.stages import (
        BatchPlan,
        JobRef,
        picking_stages,
        rescaled_reference,
        stages,
        with_queue,
    )

    site = SiteConfig(data_roots=[tmp_path], visit_directory=str(tmp_path) + "/{visit}",
                      executables=Executables(ctffind="/opt/ctffind/bin/ctffind"),
                      queue=Queue(names=["relion", "gpu"], minimum_dedicated=2))
    second = what in ("second pass", "through the queue")
    given = {**GOOD_PARAMS, "stop_after_motion_correction": "false",
             "stop_after_ctf_estimation": "true"}
    if what != "preprocessing":  # PATo's keys, a few set-up values changed, a discard step
        given.update({"stop_after_ctf_estimation": "false",
                      "do_second_pass": str(second).lower(),
                      "autopick_LoG_diam_min": "90", "autopick_LoG_diam_max": "120",
                      "extract_downscale": "1", "batch_size": str(BATCH_SIZE),
                      "do_discard_on_image_statistics": "true", "refine_do_gpu": "0",
                      "refine_mpi": "2", "refine_threads": "1", "class2d_nr_classes": "4",
                      "inimodel_nr_iter_initial": "3", "autopick_lowpass": "15"})
    glob, gain = "Movies/GridSquare_*/Data/*.tiff", "gain.mrc"
    if second:  # its own small box, batch size and 3D classification
        given.update({"extract2_downscale": "1", "extract2_small_boxsize": "72",
                      "batch_size_pass2": "2000",
                      "do_class3d_pass2": "1", "autopick_do_gpu": "0", "symmetry": "C2"})
    if what == "through the queue":  # every job relion_it can send, to the site's 2nd queue
        given.update({f"{step}_submit_to_queue": "1" for step in (
            "motioncor", "ctffind", "autopick", "extract", "discard", "refine")})
        given["queue_name"] = "gpu"
    params = with_queue(with_calculated(parameters.parse(given)), site)
    ours = stages(params, site, glob, gain)
    if what != "preprocessing":
        plan = BatchPlan(params)
        ours += [plan.discard(BATCH_FILE), plan.class2d(1, BATCH_FILE, BATCH_SIZE),
                 plan.inimodel(BATCH_FILE), plan.class3d(1, BATCH_FILE, BATCH_SIZE, REFERENCE)]
    if second:
        best = Reference(*BEST_CLASS3D)
        plan2 = BatchPlan(params, second=True)
        reference = rescaled_reference(params, best)[0]
        ours += picking_stages(params, best) + [
            plan2.discard(BATCH2_FILE), plan2.class2d(1, BATCH2_FILE, BATCH_SIZE),
            plan2.class3d(1, BATCH2_FILE, BATCH_SIZE, reference)]
    overrides = {"import_images": glob, "motioncor_gainreference": gain,
                 "motioncor_defectfile": "", "motioncor_exe": "",
                 "ctffind4_exe": site.executables.ctffind, "images_are_movies": True}
    options_mod.write_options(tmp_path, options_mod.options_text(params, overrides,
                                                                 processing_job_id=1))
    relion_it = {**OPTIONS, **options_mod.read_options(tmp_path / options_mod.OPTIONS_FILE)}
    relion_it["class3d_reference"] = REFERENCE  # InitialModel's best class (1984-1985)
    env = dict(os.environ)
    theirs_dir, ours_dir = tmp_path / "relion_it", tmp_path / "relion_zo"
    added: dict[str, dict[str, str]] = {"relion_it": {}, "relion_zo": {}}
    for folder in (theirs_dir, ours_dir):
        folder.mkdir()
        pl.ensure_pipeline(folder)
    for stage in ours:
        name = stage.name_in_script
        mine = [(label, value.resolve(added["relion_zo"]) if isinstance(value, JobRef)
                 else value) for label, value in stage.options]
        added["relion_zo"][name] = pl.add_job("relion_pipeliner", ours_dir, stage.job_type,
                                              mine, env)
        if name == "autopick2_job":  # relion_it moves on to the second pass
            relion_it = pass2_options(relion_it)
        theirs = with_queue_options(name, relion_it,
                                    RELION_IT_JOBS[name](relion_it, added["relion_it"]))
        added["relion_it"][name] = pl.add_job("relion_pipeliner", theirs_dir, stage.job_type,
                                              theirs, env)
    assert added["relion_it"] == added["relion_zo"]
    first_pass = ["import_job", "motioncorr_job", "ctffind_job", "autopick_job", "extract_job",
                  "split_job", "discard_job", "class2d_job_batch_001", "inimodel",
                  "class3d_job_batch_001"]
    assert list(added["relion_zo"]) == {
        "preprocessing": first_pass[:3], "picking and classification": first_pass,
        "second pass": first_pass + [
            "autopick2_job", "extract2_job", "split2_job", "discard2_job",
            "class2d_pass2_job_batch_001", "class3d2_job_batch_001"]}[
                "second pass" if second else what]
    if second:  # what the jobs were made from, relion_it's way
        assert relion_it["class3d_reference"] == reference
        assert reference == "Class3D/job010/run_it005_class002_rescaled.mrc"
    differences = set()
    for name, job in added["relion_zo"].items():
        a, b = _job_star(theirs_dir / job / "job.star"), _job_star(ours_dir / job / "job.star")
        assert a.keys() == b.keys()
        differences |= {(name, key, a[key], b[key]) for key in a if a[key] != b[key]}
    assert {(job, key) for job, key, *_ in differences} == KNOWN_DIFFERENCES, differences
    queued = {name for name, job in added["relion_zo"].items()
              if _job_star(ours_dir / job / "job.star").get("do_queue") == "Yes"}
    if what == "through the queue":  # all but Import and the split jobs, to the queue named
        assert queued == set(added["relion_zo"]) - {"import_job", "split_job", "split2_job"}
        star = _job_star(ours_dir / added["relion_zo"]["class2d_job_batch_001"] / "job.star")
        assert star["queuename"] == "gpu" and star["qsub"] == "sbatch"
        assert star["min_dedicated"] == "2"
        assert star["qsubscript"].endswith("relion_zo/templates/slurm.sh")
    else:
        assert queued == set()
