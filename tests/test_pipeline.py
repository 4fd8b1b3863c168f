"""relion_it 3.1's whole pipeline, both passes, with RELION's own programs, through ISPyB,
RabbitMQ and Slurm.

PATo's default job (its rows exactly, written by SQL with the web user; its message, no recipe)
on synthetic particle movies: Import, MotionCorr, CtfFind (the ASPIRE stand-in), LoG AutoPick,
Extract, the split into batches, Class2D, InitialModel and Class3D with 2 MPI processes; then
the second pass: AutoPick with pass 1's best 3D class, Extract, Class2D and Class3D from that
class rescaled to the second pass's particles. The site sends MotionCorr and every
relion_refine job to the local Slurm. It is stopped while Class2D runs in Slurm and in the
second pass, carried on each time with ``relion-zo resume``, and ends in success: finished
jobs reused, none added twice, nothing of RELION (or of Slurm) left behind, and a project
RELION's own tools read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
)
from ispyb.sqlalchemy import (
    t_ParticleClassification_has_CryoemInitialModel as InitialModelLink,
)
from runs import job_status, processes_in, site_config, write_site_file
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_ispyb import acquired, pato_status, publish_like_pato, write_ui_job
from ui_jobs import pato_rows

from relion_zo import slurm
from relion_zo.devstack import particles
from relion_zo.devstack.demo import DEMO_SITE_DEFAULTS
from relion_zo.relion_it import pipeliner as pl

LIMIT = 600  # seconds for a whole run; a guard against a hang, not a speed check
MOVIES = 3  # about 345 particles: batch 1 (300) full, batch 2 not
# The demo site's classification settings, with 2 MPI processes for every relion_refine job
# and an InitialModel smaller still (2 cores; the demo runs 1 process of 2 threads); the second
# pass extracts to a box of its own (64: 2.25 Å, pass 1's 48 are 3 Å), so its Class3D needs
# pass 1's class rescaled, and runs Class3D too.
SITE_DEFAULTS = {**DEMO_SITE_DEFAULTS, "refine_mpi": 2, "refine_threads": 1,
                 "inimodel_nr_iter_initial": 2, "inimodel_nr_iter_inbetween": 4,
                 "inimodel_nr_iter_final": 2, "inimodel_batchsize_ini": 20,
                 "inimodel_batchsize_final": 40, "extract2_small_boxsize": 64,
                 "do_class3d_pass2": True}
# relion_it's names: pass 1 moves on after batch 1's Class3D, so batch 2 has none
JOBS = ["import_job", "motioncorr_job", "ctffind_job", "autopick_job", "extract_job",
        "split_job", "class2d_job_batch_001", "inimodel", "class3d_job_batch_001",
        "autopick2_job", "extract2_job", "split2_job", "class2d_pass2_job_batch_001",
        "class3d2_job_batch_001"]


def _wait_for(engine, site, pjid, text: str, limit: float = LIMIT, *,
              resuming: bool = False) -> None:
    """Until the job's message has ``text``; a stopped job may show until a resume claims it."""
    deadline = time.monotonic() + limit
    waiting = ("submitted", "queued", "running") + (("stopped",) if resuming else ())
    while text not in ((state := job_status(engine, site, pjid)).message or ""):
        assert state.state in waiting, (state.state, state.message)
        assert time.monotonic() < deadline, f"no {text!r} within {limit} s: {state.message}"
        time.sleep(0.2)


def _wait_until(check, what: str, limit: float = LIMIT):
    deadline = time.monotonic() + limit
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.2)
    return found


def _resume(site_file, pjid) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "relion_zo.cli.main", "resume", "--config", str(site_file),
         str(pjid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(services, pjid) -> None:
    out = services.capture(["stop", "--local", "--config", str(services.site_file), str(pjid),
                            "--wait", "30"])
    assert "stopped" in out


def test_patos_default_job_runs_relion_its_two_passes_through_stops(
        engine, web_engine, stack_settings, services, tmp_path, live_visits):
    ctffind = shutil.which("relion-zo-ctffind-aspire")
    assert ctffind, "scripts/install-deps.sh installs relion-zo-ctffind-aspire"
    # a site that sends MotionCorr and every relion_refine job to its Slurm cluster
    site = site_config(tmp_path, stack_settings, idle_seconds=0, executables={
        "relion_pipeliner": "relion_pipeliner", "ctffind": ctffind},
        relion_it_defaults={**SITE_DEFAULTS, "motioncor_submit_to_queue": True,
                            "refine_submit_to_queue": True},
        queue={"names": ["relion"], "slurm_conf": str(stack_settings.slurm_conf_path)})
    services.site_file = write_site_file(site, tmp_path / "site-pipeline.yaml")
    services.dispatcher()
    services.worker()
    live = live_visits(site, movies=0, size=particles.MOVIE_SIZE)
    particles.write_particle_movies(live.raw / "GridSquare_1" / "Data", MOVIES, seed=11)
    dcid, raw = acquired(engine, live, suffix="mrc", template="GridSquare_1/Data/*.mrc",
                         grid=True, movies=0)
    # what PATo's form sends for these movies: 2 Å, 5 e/Å², a particle of 90-120 Å, the box
    # its "calculate for me" works out (72), crYOLO ticked
    rows = pato_rows(raw, "mrc", str(live.gain), stop_after_ctf=False, angpix="2",
                     dose="5", diameters=("90", "120"), boxsize="72")
    pjid = write_ui_job(web_engine, dcid, "Submitted via PATo", rows)
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    project = live.project(pjid)

    # 1. stopped while Class2D runs in Slurm (through the worker)
    _wait_for(engine, site, pjid, "Class2D batch 1 of 2 running")
    assert "AutoPick 3/3 (" in job_status(engine, site, pjid).message
    class2d = pl.read_submitted(project)["class2d_job_batch_001"]
    _wait_until(lambda: [j for j in slurm.project_jobs(project, site.queue)
                         if j.relion_job == class2d and j.state == "RUNNING"],
                "Class2D running in Slurm")
    _stop(services, pjid)
    assert job_status(engine, site, pjid).state == "stopped"
    assert processes_in(project) == []
    assert pl.exit_state(project, class2d) is None
    assert [j for j in slurm.project_jobs(project, site.queue) if j.active] == []
    queued = {j.relion_job for j in slurm.project_jobs(project, site.queue)}
    assert {pl.read_submitted(project)["motioncorr_job"], class2d} <= queued

    # 2. carried on (InitialModel and Class3D) into the second pass, and stopped there
    resumed = _resume(services.site_file, pjid)
    try:
        _wait_for(engine, site, pjid, "AutoPick pass 2", resuming=True)
        assert "Class3D batch 1 of 2" in job_status(engine, site, pjid).message
        _stop(services, pjid)
        out, _ = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, out
    assert processes_in(project) == []
    assert "reusing Import/job001/ for import_job" in (project / "relion_zo_run.log").read_text()
    assert not list(project.glob("RUNNING_*"))
    submitted = pl.read_submitted(project)
    best = (project / "RELION_IT_2NDPASS_3DREF").read_text().splitlines()
    assert best[0].startswith(submitted["class3d_job_batch_001"]) and float(best[1]) == 3.0

    # 3. carried on in the second pass (RELION_IT_2NDPASS_3DREF) to the end
    resumed = _resume(services.site_file, pjid)
    out, _ = resumed.communicate(timeout=LIMIT)
    assert resumed.returncode == 0, out
    state = job_status(engine, site, pjid)
    assert state.state == "success", state.message
    assert pato_status(engine, pjid) == "Success"
    assert state.message.startswith(
        "Import 3, MotionCorr 3/3, CtfFind 3/3, AutoPick pass 2 3/3 ("), state.message
    assert state.message.endswith(
        "Class2D pass 2 batch 1 of 1, Class3D pass 2 batch 1 of 1"), state.message
    assert processes_in(project) == []
    log = (project / "relion_zo_run.log").read_text()
    assert f"second pass: carrying on, picking with {best[0]}" in log

    # relion_it's names, each once, each a job of the pipeline, none added twice
    lines = (project / pl.SUBMITTED_JOBS).read_text().splitlines()
    assert [line.split(" = ")[0] for line in lines] == JOBS
    submitted = pl.read_submitted(project)
    assert sorted(submitted.values()) == sorted(pl.process_names(project))
    for job in submitted.values():
        assert pl.exit_state(project, job) == "success", job

    # 2D class averages, an initial model the size of the particle, 3D classes
    class2d = submitted["class2d_job_batch_001"]
    with mrcfile.open(project / class2d / "run_it008_classes.mrcs") as mrc:
        averages = mrc.data
    assert averages.shape == (4, 48, 48) and np.isfinite(averages).all()
    assert averages.std(axis=(1, 2)).max() > 0
    inimodel = submitted["inimodel"]
    with mrcfile.open(project / inimodel / "run_it008_class001.mrc") as mrc:
        volume, angpix = mrc.data.astype(float), float(mrc.voxel_size.x)
    assert volume.shape == (48, 48, 48)
    # a blob the size of the known density (noise over the box would give about 80 Å)
    truth = _radius_of_gyration(particles.density(box=48, angpix=angpix), angpix)
    assert abs(_radius_of_gyration(volume, angpix) - truth) < 0.4 * truth
    assert (project / submitted["class3d_job_batch_001"] / "run_it005_model.star").exists()

    # the second pass: picked with pass 1's class, extracted to 64 pixels, classified in 2D and
    # in 3D from the class rescaled to 2.25 Å in a box of 64
    picked = pl.star_column(project / submitted["autopick2_job"] / "summary.star", "",
                            "_rlnGroupNrParticles")
    assert len(picked) == 3 and sum(int(n) for n in picked) > 0
    assert f"({sum(int(n) for n in picked):,} particles)" in state.message
    rescaled = best[0].replace(".mrc", "_rescaled.mrc")
    with mrcfile.open(project / rescaled) as mrc:
        assert mrc.data.shape == (64, 64, 64) and abs(mrc.voxel_size.x - 2.25) < 0.01
    class3d2 = (project / submitted["class3d2_job_batch_001"] / "job.star").read_text()
    assert rescaled in class3d2
    with mrcfile.open(project / submitted["class2d_pass2_job_batch_001"]
                      / "run_it008_classes.mrcs") as mrc:
        assert mrc.data.shape == (4, 64, 64) and np.isfinite(mrc.data).all()

    _check_results(engine, pjid, dcid, project, submitted)

    # RELION's own tools read the project: the pipeline and every job's options
    for star, block in [(pl.PIPELINE_STAR, "data_pipeline_processes")] + [
            (f"{job}job.star", "data_joboptions_values") for job in submitted.values()]:
        done = subprocess.run(["relion_star_printtable", star, block], check=False, cwd=project,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip(), (star, done.stdout, done.stderr)


def _radius_of_gyration(volume: np.ndarray, angpix: float) -> float:
    """Å, of the map's density above half its maximum, about its centre of mass."""
    mass = np.where(volume > 0.5 * volume.max(), volume, 0.0)
    grid = np.indices(volume.shape).reshape(3, -1).T * angpix
    weights = mass.reshape(-1)
    centre = (grid * weights[:, None]).sum(axis=0) / weights.sum()
    return float(np.sqrt((((grid - centre) ** 2).sum(axis=1) * weights).sum() / weights.sum()))


def _check_results(engine, pjid, dcid, project, submitted) -> None:
    """ISPyB holds the job's results as a web UI shows them, each once although the job was
    stopped and resumed three times (each resume a new program), with RELION's values."""
    with Session(engine) as db:
        programs = select(AutoProcProgram.autoProcProgramId).where(
            AutoProcProgram.processingJobId == pjid)
        movies = db.execute(select(Movie).where(Movie.dataCollectionId == dcid)
                            .order_by(Movie.movieNumber)).scalars().all()
        motion = db.execute(select(MotionCorrection).where(
            MotionCorrection.autoProcProgramId.in_(programs))).scalars().all()
        ctf = db.execute(select(CTF).where(CTF.autoProcProgramId.in_(programs))).scalars().all()
        pickers = db.execute(select(ParticlePicker).where(
            ParticlePicker.programId.in_(programs))).scalars().all()
        groups = db.execute(select(ParticleClassificationGroup).where(
            ParticleClassificationGroup.programId.in_(programs))).scalars().all()
        classes = db.execute(select(ParticleClassification).where(
            ParticleClassification.particleClassificationGroupId.in_(
                [g.particleClassificationGroupId for g in groups]))).scalars().all()
        models = db.execute(select(InitialModelLink.c.cryoemInitialModelId).distinct().where(
            InitialModelLink.c.particleClassificationId.in_(
                [c.particleClassificationId for c in classes]))).scalars().all()
        # PATo's queries for a processing program's results (pato-backend crud/autoproc.py)
        program = motion[0].autoProcProgramId
        pato_motion = db.execute(
            select(MotionCorrection, CTF, Movie).filter(
                MotionCorrection.autoProcProgramId == program).join(Movie).join(CTF)
            .order_by(MotionCorrection.imageNumber)).all()
        pato_ctf = db.execute(
            select(CTF.estimatedDefocus, ParticlePicker.numberOfParticles,
                   MotionCorrection.imageNumber)
            .filter(MotionCorrection.autoProcProgramId == program)
            .join(CTF).join(ParticlePicker, ParticlePicker.firstMotionCorrectionId
                            == MotionCorrection.motionCorrectionId)
            .order_by(MotionCorrection.imageNumber)).all()
        pato_classes = db.execute(
            select(ParticleClassificationGroup, ParticleClassification)
            .filter(ParticleClassificationGroup.programId.in_(programs),
                    ParticleClassificationGroup.type == "2D")
            .join(ParticleClassification, isouter=True)
            .order_by(ParticleClassification.particlesPerClass.desc())).all()

    assert [m.movieNumber for m in movies] == [1, 2, 3]
    assert [m.movieFullPath for m in movies] == sorted(m.movieFullPath for m in movies)
    assert len(motion) == 3 and len(ctf) == 3 and len(pato_motion) == 3
    star = project / submitted["motioncorr_job"] / "corrected_micrographs.star"
    total = [float(v) for v in pl.star_column(star, "micrographs", "_rlnAccumMotionTotal")]
    assert sorted(round(m.totalMotion, 3) for m in motion) == sorted(round(t, 3) for t in total)
    for row in motion:
        drift = json.loads(Path(row.driftPlotFullPath).read_text())["data"][0]
        assert len(drift["x"]) == 8 and row.lastFrame == 8
        assert Path(row.micrographSnapshotFullPath).read_bytes()[:4] == b"\x89PNG"
    for row in ctf:
        assert row.fftTheoreticalFullPath.endswith("_ctf.png")
        assert Path(row.fftTheoreticalFullPath).read_bytes()[:4] == b"\x89PNG"
    star = project / submitted["ctffind_job"] / "micrographs_ctf.star"
    mean = [(float(u) + float(v)) / 2 for u, v in zip(
        pl.star_column(star, "micrographs", "_rlnDefocusU"),
        pl.star_column(star, "micrographs", "_rlnDefocusV"), strict=True)]
    assert sorted(round(c.estimatedDefocus) for c in ctf) == sorted(round(m) for m in mean)
    # a picker row per micrograph and picking job: LoG's, then the second pass's reference
    log_picks = sum(p.numberOfParticles for p in pickers if p.particlePickingTemplate == "LoG")
    extracted = pl.star_count(project / submitted["extract_job"] / "particles.star",
                              "particles")
    assert len(pickers) == 6 and log_picks == extracted
    assert all(Path(p.summaryImageFullPath).read_bytes()[:4] == b"\x89PNG" for p in pickers)
    assert len(pato_ctf) == 6
    # a group per Class2D and Class3D job, a row per class; InitialModel's model linked
    assert sorted((g.type, g.batchNumber) for g in groups) == [("2D", 1), ("2D", 1), ("3D", 1),
                                                               ("3D", 1)]
    assert len(classes) == 4 + 4 + 2 + 2 and len(pato_classes) == 8
    assert all(0 <= c.classDistribution <= 1 for c in classes)
    kinds = {g.particleClassificationGroupId: g.type for g in groups}
    for c in classes:  # a 2D average as a picture the web UIs show; a 3D class as its map
        suffix = ".png" if kinds[c.particleClassificationGroupId] == "2D" else ".mrc"
        assert c.classImageFullPath.endswith(suffix) and Path(c.classImageFullPath).is_file()
    assert len(models) == 1
