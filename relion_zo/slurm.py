"""RELION's jobs on a Slurm cluster: finding a project's Slurm jobs, reading their state,
cancelling them.

RELION 3.1 submits a job that has "Submit to queue? Yes" itself: it writes the job's
``run_submit.script`` from the site's template and runs ``sbatch`` on it in the project folder
(docs/slurm.md). relion_zo never submits; it watches. A project's Slurm jobs are the ones whose
batch script lies in one of the project's job folders, so each one names its RELION job
(``Class2D/job008/run_submit.script`` is ``Class2D/job008/``) whatever the site's template
calls it. ``squeue -t all`` still lists a finished job for Slurm's ``MinJobAge`` (300 s by
default), long enough to read how it ended without accounting.

Plain functions over a ``run`` callable (``subprocess.run``), so the parsing is tested without a
cluster and the rest on the local stack's one-node Slurm.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from relion_zo.config import Queue

log = logging.getLogger(__name__)

SCRIPT = "run_submit.script"  # RELION's name for the script it writes in the job folder
SQUEUE_FORMAT = "%i|%T|%r|%o"  # job id, state, reason, command (the batch script's path)
TIMEOUT = 20.0
# Slurm's job states (squeue(1), JOB STATE CODES), by what they mean for the RELION job.
WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                     "RESIZING", "SUSPENDED", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"})
FAILED = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"})

Run = Callable[..., subprocess.CompletedProcess]


class SlurmError(RuntimeError):
    """squeue or scancel could not be run or failed."""


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str  # Slurm's, e.g. PENDING, RUNNING, COMPLETED, CANCELLED
    reason: str  # why it waits (Resources, Priority ...) or "None"
    relion_job: str  # the RELION job whose script it runs, "Class2D/job008/"

    @property
    def active(self) -> bool:
        return self.state in WAITING or self.state in RUNNING

    @property
    def waiting(self) -> bool:
        return self.state in WAITING

    @property
    def failed(self) -> bool:
        return self.state in FAILED

    def describe(self) -> str:
        why = f", {self.reason}" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"Slurm job {self.job_id} {self.state}{why}"


def packaged_template() -> Path:
    """relion_zo's own Slurm submission template (relion_zo/templates/slurm.sh)."""
    return Path(str(resources.files("relion_zo") / "templates" / "slurm.sh"))


def environment(queue: Queue | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the site's ``SLURM_CONF``."""
    env = dict(os.environ if base is None else base)
    if queue is not None and queue.slurm_conf:
        env["SLURM_CONF"] = queue.slurm_conf
    return env


def tool(queue: Queue, name: str) -> str:
    """``squeue`` or ``scancel`` beside the site's submit command (or on PATH)."""
    command = queue.submit_command
    return str(Path(command).parent / name) if "/" in command else name


def parse_squeue(text: str, project: Path) -> list[SlurmJob]:
    """The jobs in ``squeue -h -o SQUEUE_FORMAT`` output whose script is in ``project``."""
    prefix = str(Path(project).resolve()) + "/"
    found = []
    for line in text.splitlines():
        fields = line.strip().split("|", 3)
        if len(fields) != 4:
            continue
        job_id, state, reason, command = fields
        if not command.startswith(prefix) or not command.endswith("/" + SCRIPT):
            continue
        relion_job = command[len(prefix):-len(SCRIPT)]
        if relion_job.count("/") != 2:  # Type/jobNNN/
            continue
        found.append(SlurmJob(job_id, state.split()[0], reason, relion_job))
    return found


def project_jobs(project: Path, queue: Queue, run: Run = subprocess.run) -> list[SlurmJob]:
    """The project's Slurm jobs that Slurm still knows, oldest first."""
    argv = [tool(queue, "squeue"), "-h", "-t", "all", "-o", SQUEUE_FORMAT]
    result = _call(argv, queue, run)
    jobs = parse_squeue(result.stdout, project)
    return sorted(jobs, key=lambda job: _number(job.job_id))


def cancel(job_ids: Iterable[str], queue: Queue, run: Run = subprocess.run) -> None:
    """``scancel`` the jobs (no error for one already gone)."""
    ids = [str(i) for i in job_ids if str(i).replace("_", "").isdigit()]
    if ids:
        _call([tool(queue, "scancel"), *ids], queue, run)


def cancel_project(project: Path, queue: Queue | None, run: Run = subprocess.run) -> list[str]:
    """Cancel every active Slurm job of ``project``; returns their ids. Never raises: it runs
    while a job ends, and what it cannot cancel it logs."""
    if queue is None:
        return []
    try:
        active = [job.job_id for job in project_jobs(project, queue, run) if job.active]
        cancel(active, queue, run)
    except SlurmError as exc:
        log.error("could not cancel the Slurm jobs of %s: %s", project, exc)
        return []
    if active:
        log.info("cancelled Slurm job(s) %s of %s", ", ".join(active), project)
    return active


def _call(argv: list[str], queue: Queue, run: Run) -> subprocess.CompletedProcess:
    try:
        result = run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                     env=environment(queue), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{argv[0]}: {exc}") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or "").split())[:200]
        raise SlurmError(f"{Path(argv[0]).name} exited with status {result.returncode}: "
                         f"{detail}")
    return result


def _number(job_id: str) -> int:
    head = job_id.split("_", 1)[0]
    return int(head) if head.isdigit() else 0
