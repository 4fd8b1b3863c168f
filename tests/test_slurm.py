"""RELION's jobs through Slurm, on the local stack's one-node cluster: RELION 3.1 writes each
job's script from relion_zo's template and submits it with sbatch; relion_zo records the Slurm
job against the RELION job, shows a job waiting in the queue, cancels the job's Slurm jobs on
Stop, and turns a Slurm job killed from outside into a failure naming both. Real MariaDB,
RELION and Slurm. (Class2D through Slurm, stopped while it runs, is in test_pipeline.)"""

from __future__ import annotations

import os
import time

import pytest
from runs import Background, job_status, processes_in, program_rows, site_config
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_slurm_stack import client, submit, wait_for

from ispyb.sqlalchemy import AutoProcProgramMessage
from relion_zo import slurm
from relion_zo.manager import JobManager
from relion_zo.relion_it import pipeliner as pl

RUN_LIMIT = 180.0


def queue_site(tmp_path, stack_settings, **overrides):
    queue = {"submit_command": "sbatch", "names": ["relion"],
             "slurm_conf": str(stack_settings.slurm_conf_path)}
    return site_config(tmp_path, stack_settings, queue=queue, **overrides)


def _messages(engine, pjid) -> list[str]:
    (program,) = program_rows(engine, pjid)
    with Session(engine) as db:
        return list(db.execute(select(AutoProcProgramMessage.message).where(
            AutoProcProgramMessage.autoProcProgramId == program.autoProcProgramId)).scalars())


def _project_jobs(site, project):
    return slurm.project_jobs(project, site.queue)


@pytest.fixture
def full_node(stack_settings, tmp_path):
    """Every CPU of the node taken by another user's job, so the next one waits."""
    folder = tmp_path / "blocker"
    folder.mkdir()
    cpus = job_cpus = os.cpu_count()
    blocker = submit(stack_settings, "sleep 600\n", folder, f"--cpus-per-task={job_cpus}",
                     "--ntasks=1")
    wait_for(stack_settings, blocker, {"RUNNING"})
    yield cpus
    client(stack_settings, "scancel", blocker)


def test_motioncorr_through_slurm_is_recorded_against_the_relion_job(
        processing_engine, engine, live_visits, tmp_path, stack_settings):
    site = queue_site(tmp_path, stack_settings)
    live = live_visits(site)
    pjid = live.start(motioncor_submit_to_queue="true")
    run = Background(pjid, engine=processing_engine, config=site)
    outcome = run.join(RUN_LIMIT)
    assert outcome.state == "success", outcome.message
    project = live.project(pjid)
    motioncorr = pl.read_submitted(project)["motioncorr_job"]
    script = (project / motioncorr / "run_submit.script").read_text()
    assert "#SBATCH --partition=relion" in script and "relion_run_motioncorr" in script
    (slurm_job,) = [j for j in _project_jobs(site, project) if j.relion_job == motioncorr]
    assert slurm_job.state == "COMPLETED"
    recorded = f"{motioncorr} runs as Slurm job {slurm_job.job_id}"
    assert recorded in _messages(engine, pjid)
    assert recorded in (project / "relion_zo_run.log").read_text()
    assert sorted(project.glob("MotionCorr/*/Movies/*.mrc"))  # RELION's output, via Slurm
    assert processes_in(project) == []


def test_a_job_waiting_in_the_queue_says_so_and_stop_cancels_it_within_seconds(
        processing_engine, engine, live_visits, tmp_path, stack_settings, full_node):
    site = queue_site(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site)
    pjid = live.start(motioncor_submit_to_queue="true")
    run = Background(pjid, engine=processing_engine, config=site)
    project = live.project(pjid)
    deadline = time.monotonic() + RUN_LIMIT
    # Slurm gives the reason at its next scheduling pass (at first it is "None")
    while "PENDING, Resources)" not in (job_status(engine, site, pjid).message or ""):
        assert time.monotonic() < deadline, job_status(engine, site, pjid).message
        time.sleep(0.2)
    message = job_status(engine, site, pjid).message
    (waiting,) = [j for j in _project_jobs(site, project) if j.active]
    assert waiting.state == "PENDING"
    assert (f"waiting in the queue: {waiting.relion_job.rstrip('/')} (Slurm job "
            f"{waiting.job_id} PENDING, Resources)") in message, message
    asked = time.monotonic()
    JobManager(processing_engine, site).request_stop(pjid, "test_slurm")
    outcome = run.join(RUN_LIMIT)
    took = time.monotonic() - asked
    assert outcome.state == "stopped", outcome.message
    assert job_status(engine, site, pjid).state == "stopped"
    (cancelled,) = [j for j in _project_jobs(site, project) if j.job_id == waiting.job_id]
    assert cancelled.state == "CANCELLED"
    assert [j for j in _project_jobs(site, project) if j.active] == []
    assert processes_in(project) == []
    print(f"stop -> stopped, Slurm job cancelled: {took:.2f} s")


def test_a_slurm_job_killed_from_outside_fails_the_job_naming_it(
        processing_engine, engine, live_visits, tmp_path, stack_settings, full_node):
    site = queue_site(tmp_path, stack_settings, idle_seconds=3600)
    live = live_visits(site)
    pjid = live.start(motioncor_submit_to_queue="true")
    run = Background(pjid, engine=processing_engine, config=site)
    project = live.project(pjid)
    deadline = time.monotonic() + RUN_LIMIT
    while not (active := [j for j in _project_jobs(site, project) if j.active]):
        assert time.monotonic() < deadline, "no Slurm job submitted"
        time.sleep(0.2)
    (victim,) = active
    client(stack_settings, "scancel", victim.job_id)  # the cluster's administrator
    outcome = run.join(RUN_LIMIT)
    assert outcome.state == "failure"
    assert outcome.message == (f"Failed: {victim.relion_job} ended as Slurm job {victim.job_id} "
                               "CANCELLED"), outcome.message
    state = job_status(engine, site, pjid)
    assert state.state == "failure" and victim.relion_job in state.message
    assert processes_in(project) == []
