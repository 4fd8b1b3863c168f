"""A demo visit: ISPyB rows, a raw folder of synthetic particle movies, a gain reference, a
site file. The job runs relion_it's whole pipeline, both passes (docs/running.md says how long
each stage takes on two cores); the settings below are what make it fit a demo, each said why."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import yaml
from ispyb.sqlalchemy import (
    CTF,
    AutoProcProgram,
    AutoProcProgramAttachment,
    AutoProcProgramMessage,
    BLSession,
    CryoemInitialModel,
    DataCollection,
    DataCollectionGroup,
    MotionCorrection,
    Movie,
    ParticleClassification,
    ParticleClassificationGroup,
    ParticlePicker,
    Person,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
    Proposal,
)
from ispyb.sqlalchemy import (
    t_ParticleClassification_has_CryoemInitialModel as InitialModelLink,
)
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from relion_zo.devstack import particles, stack, synthetic
from relion_zo.visits import parse_visit_name

DEMO_VISIT = "cm00001-1"
RAW_SUBFOLDER = "raw"
FILE_TEMPLATE = "GridSquare_*/Data/*.mrc"
GAIN_NAME = "gain.mrc"
# What a user would type for these movies (devstack.particles: 2 Å pixels, a particle about
# 110 Å across, 5 e/Å² per frame), as PATo's form would send it: mask and boxes are left to
# relion_it's "calculate for me", and the classification settings to the site.
DEMO_PARAMETERS = {
    "angpix": 2.0,
    "voltage": 300,
    "Cs": 2.7,
    "motioncor_doseperframe": 5.0,
    "motioncor_gainreference": GAIN_NAME,
    "autopick_LoG_diam_min": 90,
    "autopick_LoG_diam_max": 120,
    "extract_downscale": True,
}
# The demo site's relion_it_defaults, for what a job leaves out.
# - What fits a 2-core machine without a GPU: relion_it's defaults ask for 4 MPI x 6 threads,
#   8 MPI for CTFFIND, and GPUs for classification.
# - Classification sized for the data: about 115 particles a movie, so batches of 300 (with
#   4 movies batch 1 is full, batch 2 is not), 4 classes, few iterations, an InitialModel cut
#   to 12 iterations of 30-60 particles, and 30-degree sampling for InitialModel and Class3D
#   (relion_it's 300 iterations of 100-500 particles, and Class3D at 7.5 degrees, take hours on
#   two cores; docs/performance.md has the figures).
DEMO_SITE_DEFAULTS = {
    "motioncor_mpi": 1,
    "motioncor_threads": 2,
    "motioncor_patches_x": 1,
    "motioncor_patches_y": 1,
    "ctffind_mpi": 1,
    "refine_do_gpu": False,
    # one relion_refine of 2 threads: with 2 MPI processes the leader only waits (on a core)
    "refine_mpi": 1,
    "refine_threads": 2,
    # The second pass: it picks with pass 1's 3D class on the CPU (relion_it's default asks
    # for a GPU), once that class is better than 40 Å (relion_it's 20 Å is more than 5
    # iterations at 30 degrees reach on this data: about 29 Å), and extracts to the small box.
    "autopick_do_gpu": False,
    "minimum_resolution_3dref_2ndpass": 40,
    "extract2_downscale": True,
    "batch_size": 300,
    "minimum_batch_size": 100,
    "class2d_nr_classes": 4,
    "class2d_nr_iter": 8,
    "inimodel_nr_classes": 1,
    "inimodel_nr_iter_initial": 3,
    "inimodel_nr_iter_inbetween": 6,
    "inimodel_nr_iter_final": 3,
    "inimodel_angle_step": "30 degrees",
    "inimodel_resol_final": 25,
    "inimodel_batchsize_ini": 30,
    "inimodel_batchsize_final": 60,
    "class3d_nr_classes": 2,
    "class3d_nr_iter": 5,
    "class3d_angle_step": "30 degrees",
}
CTFFIND_STANDIN = "relion-zo-ctffind-aspire"  # docs/ctffind-standin.md
# With ``--slurm``: every job relion_it can send to a queue goes to the local stack's Slurm.
QUEUE_DEFAULTS = {f"{step}_submit_to_queue": True for step in (
    "motioncor", "ctffind", "autopick", "extract", "discard", "refine")}


@dataclass(frozen=True)
class DemoVisit:
    session_id: int
    visit: str
    config_path: Path
    visit_directory: Path
    image_directory: Path
    file_template: str
    parameters_path: Path


def seed_visit(db: Session, visit: str, *, beamline: str = "m01", start: dt.datetime) -> int:
    """Find or create Person, Proposal and BLSession for ``visit``; returns the session id."""
    code, number, visit_number = parse_visit_name(visit)
    proposal_id = db.execute(
        select(Proposal.proposalId).where(
            Proposal.proposalCode == code, Proposal.proposalNumber == number
        )
    ).scalar()
    if proposal_id is None:
        person_id = db.execute(select(Person.personId).where(Person.login == "demo")).scalar()
        if person_id is None:
            person_id = db.execute(
                insert(Person).values(givenName="Demo", familyName="User", login="demo")
            ).inserted_primary_key[0]
        proposal_id = db.execute(
            insert(Proposal).values(
                personId=person_id,
                proposalCode=code,
                proposalNumber=number,
                title="relion_zo demo",
                proposalType="em",
            )
        ).inserted_primary_key[0]
    session_id = db.execute(
        select(BLSession.sessionId).where(
            BLSession.proposalId == proposal_id, BLSession.visit_number == visit_number
        )
    ).scalar()
    if session_id is None:
        session_id = db.execute(
            insert(BLSession).values(
                proposalId=proposal_id,
                visit_number=visit_number,
                beamLineName=beamline,
                startDate=start,
                endDate=start + dt.timedelta(days=2),
            )
        ).inserted_primary_key[0]
    db.commit()
    return session_id


def remove_visit(db: Session, session_id: int) -> None:
    """Delete a throw-away visit and everything relion_zo wrote under it, in one transaction
    (tests and benchmarks that must commit for real clean up with this). The proposal goes too
    when it has no other session."""
    dcs = select(DataCollection.dataCollectionId).where(DataCollection.SESSIONID == session_id)
    pjs = select(ProcessingJob.processingJobId).where(ProcessingJob.dataCollectionId.in_(dcs))
    apps = select(AutoProcProgram.autoProcProgramId).where(AutoProcProgram.processingJobId.in_(pjs))
    proposal = db.execute(
        select(BLSession.proposalId).where(BLSession.sessionId == session_id)
    ).scalar()
    groups = select(ParticleClassificationGroup.particleClassificationGroupId).where(
        ParticleClassificationGroup.programId.in_(apps))
    classes = select(ParticleClassification.particleClassificationId).where(
        ParticleClassification.particleClassificationGroupId.in_(groups))
    models = select(InitialModelLink.c.cryoemInitialModelId).where(
        InitialModelLink.c.particleClassificationId.in_(classes))
    model_ids = list(db.execute(models).scalars())
    for statement in (  # the job's results first (relion_zo.result_rows), then the job
        delete(InitialModelLink).where(InitialModelLink.c.particleClassificationId.in_(classes)),
        delete(CryoemInitialModel).where(CryoemInitialModel.cryoemInitialModelId.in_(model_ids)),
        delete(ParticleClassification).where(
            ParticleClassification.particleClassificationGroupId.in_(groups)),
        delete(ParticleClassificationGroup).where(ParticleClassificationGroup.programId.in_(apps)),
        delete(ParticlePicker).where(ParticlePicker.programId.in_(apps)),
        delete(CTF).where(CTF.autoProcProgramId.in_(apps)),
        delete(MotionCorrection).where(MotionCorrection.autoProcProgramId.in_(apps)),
        delete(Movie).where(Movie.dataCollectionId.in_(dcs)),
        delete(AutoProcProgramAttachment).where(AutoProcProgramAttachment.autoProcProgramId.in_(apps)),
        delete(AutoProcProgramMessage).where(AutoProcProgramMessage.autoProcProgramId.in_(apps)),
        delete(AutoProcProgram).where(AutoProcProgram.processingJobId.in_(pjs)),
        delete(ProcessingJobParameter).where(ProcessingJobParameter.processingJobId.in_(pjs)),
        delete(ProcessingJobImageSweep).where(ProcessingJobImageSweep.processingJobId.in_(pjs)),
        delete(ProcessingJob).where(ProcessingJob.dataCollectionId.in_(dcs)),
        delete(DataCollection).where(DataCollection.SESSIONID == session_id),
        delete(DataCollectionGroup).where(DataCollectionGroup.sessionId == session_id),
        delete(BLSession).where(BLSession.sessionId == session_id),
    ):
        db.execute(statement)
    others = db.execute(select(BLSession.sessionId).where(BLSession.proposalId == proposal)).first()
    if proposal is not None and others is None:
        db.execute(delete(Proposal).where(Proposal.proposalId == proposal))
    db.commit()


def write_site_config(path: Path, data_root: Path, credentials: Path, zocalo: Path | None,
                      web_credentials: Path | None = None, slurm_conf: Path | None = None
                      ) -> Path:
    """The demo's site file; ``credentials`` are the processing side's, ``web_credentials``
    the web side's (docs/ispyb.md); with ``slurm_conf`` (the local stack's Slurm) RELION's
    jobs go to its queue."""
    config = {
        "data_roots": [str(data_root)],
        "visit_directory": str(data_root) + "/{year}/{visit}",
        "project_directory": "{visit_directory}/processed/relion_{processing_job_id}",
        "heartbeat_seconds": 5,
        "stale_heartbeats": 3,
        "idle_seconds": 10,  # a demo has no more movies coming: finish soon after the last
        "ispyb_credentials": str(credentials),
        "ispyb_web_credentials": str(web_credentials) if web_credentials else None,
        "zocalo_config": str(zocalo) if zocalo else None,
        # CTFFIND cannot be installed here: ASPIRE's estimator speaks its protocol
        "executables": {"relion_pipeliner": "relion_pipeliner",
                        "ctffind": shutil.which(CTFFIND_STANDIN) or CTFFIND_STANDIN},
        "relion_it_defaults": DEMO_SITE_DEFAULTS,
    }
    if slurm_conf is not None:
        config["queue"] = {"submit_command": "sbatch", "names": [stack.SLURM_PARTITION],
                           "slurm_conf": str(slurm_conf)}
        config["relion_it_defaults"] = {**DEMO_SITE_DEFAULTS, **QUEUE_DEFAULTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _particle_movie(path: Path) -> bool:
    """Whether a movie (or gain) is the size of this demo's (an older demo wrote smaller)."""
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.nx) == particles.MOVIE_SIZE


def make_demo(
    db: Session,
    root: Path,
    credentials: Path,
    zocalo: Path | None = None,
    *,
    web_credentials: Path | None = None,
    visit: str = DEMO_VISIT,
    movies: int = 4,
    slurm_conf: Path | None = None,
) -> DemoVisit:
    """Seed the visit and write its files under ``root``. Safe to run again."""
    root = root.resolve()
    start = dt.datetime.now().replace(microsecond=0)
    session_id = seed_visit(db, visit, start=start)
    start_year = db.execute(
        select(BLSession.startDate).where(BLSession.sessionId == session_id)
    ).scalar()
    data_root = root / "data"
    visit_dir = data_root / str(start_year.year) / visit
    image_dir = visit_dir / RAW_SUBFOLDER
    grid = image_dir / "GridSquare_1" / "Data"
    existing = sorted(grid.glob("*.mrc"))
    if any(not _particle_movie(path) for path in existing):  # an older demo's movies
        for path in existing:
            path.unlink()
        existing = []
    if len(existing) < movies:
        particles.write_particle_movies(grid, movies - len(existing), start=len(existing) + 1,
                                        seed=len(existing) + 1)
    gain = visit_dir / "processing" / GAIN_NAME
    if not gain.exists() or not _particle_movie(gain):
        synthetic.write_gain(gain, size=particles.MOVIE_SIZE)
    config_path = write_site_config(root / "relion_zo.yaml", data_root, credentials, zocalo,
                                    web_credentials, slurm_conf)
    parameters_path = root / "parameters.yaml"
    parameters_path.write_text(yaml.safe_dump(DEMO_PARAMETERS, sort_keys=False))
    return DemoVisit(
        session_id, visit, config_path, visit_dir, image_dir, FILE_TEMPLATE, parameters_path
    )
