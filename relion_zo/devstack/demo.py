"""A demo visit: ISPyB rows, a raw folder of synthetic movies, a gain reference, a site file."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml
from ispyb.sqlalchemy import (
    AutoProcProgram,
    AutoProcProgramAttachment,
    AutoProcProgramMessage,
    BLSession,
    DataCollection,
    DataCollectionGroup,
    Person,
    ProcessingJob,
    ProcessingJobImageSweep,
    ProcessingJobParameter,
    Proposal,
)
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from relion_zo.devstack import synthetic
from relion_zo.visits import parse_visit_name

DEMO_VISIT = "cm00001-1"
RAW_SUBFOLDER = "raw"
FILE_TEMPLATE = "GridSquare_*/Data/*.mrc"
GAIN_NAME = "gain.mrc"
DEMO_PARAMETERS = {
    "angpix": 1.0,
    "voltage": 300,
    "Cs": 2.7,
    "motioncor_doseperframe": 1.0,
    "motioncor_gainreference": GAIN_NAME,
    "motioncor_patches_x": 1,
    "motioncor_patches_y": 1,
    "stop_after_motion_correction": True,
}


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
    for statement in (
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
                      web_credentials: Path | None = None) -> Path:
    """The demo's site file; ``credentials`` are the processing side's, ``web_credentials``
    the web side's (docs/ispyb.md)."""
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
        "executables": {"relion_pipeliner": "relion_pipeliner", "ctffind": None},
        # a 2-core machine: one MPI process (relion_it's own defaults are 4 x 6 threads)
        "relion_it_defaults": {"motioncor_mpi": 1, "motioncor_threads": 2, "ctffind_mpi": 1},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_demo(
    db: Session,
    root: Path,
    credentials: Path,
    zocalo: Path | None = None,
    *,
    web_credentials: Path | None = None,
    visit: str = DEMO_VISIT,
    movies: int = 4,
    size: int = 512,
    frames: int = 8,
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
    if len(existing) < movies:
        synthetic.write_movies(grid, movies - len(existing), start=len(existing) + 1,
                               size=size, frames=frames)
    gain = visit_dir / "processing" / GAIN_NAME
    if not gain.exists():
        synthetic.write_gain(gain, size=size)
    config_path = write_site_config(root / "relion_zo.yaml", data_root, credentials, zocalo,
                                    web_credentials)
    parameters_path = root / "parameters.yaml"
    parameters_path.write_text(yaml.safe_dump(DEMO_PARAMETERS, sort_keys=False))
    return DemoVisit(
        session_id, visit, config_path, visit_dir, image_dir, FILE_TEMPLATE, parameters_path
    )
