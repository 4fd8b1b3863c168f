"""The embeddable relion_it driver: RELION 3.1's relion_it preprocessing semantics, as a plain
function with a return value.

- jobs are added with ``relion_pipeliner --addJob`` unless ``RELION_IT_SUBMITTED_JOBS`` already
  names them (a restart reuses the project's jobs);
- each pass runs ``relion_pipeliner --schedule PREPROCESS --repeat 1 ... --RunJobs "..."`` in a
  process group of its own, so new movies are imported and processed on every pass;
- ``RUNNING_RELION_IT`` and ``RUNNING_PIPELINER_PREPROCESS`` are created at the start, as
  relion_it and its repeating pipeliner make them; removing either (or ``should_stop()``
  turning true) ends the pass at once: the pipeliner's process group is killed and both files
  are removed;
- a RELION job process that dies without writing ``RELION_JOB_EXIT_SUCCESS``/``_FAILURE`` is
  noticed (the pipeliner would wait for it forever) and fails the run;
- a pass whose job folders do not change for ``stall_seconds`` (a hung program) fails the run,
  naming the job;
- however a pass ends (stop, failure, stall), nothing it started outlives it: the pipeliner's
  process group and every process working in the project that carries the project's mark in
  its environment (``RELION_ZO_PROJECT``, inherited by everything RELION starts, MPI ranks in
  process groups or sessions of their own included) are sent SIGTERM, then SIGKILL;
- a failure on a full disk says so and names the project (RELION's own error is often empty),
  and so does a write of the driver's own that fails for want of space;
- the run ends by itself when no new movie has arrived for ``idle_seconds`` and every movie on
  disk has been through every stage.

No ``sys.exit``, no ``os.chdir``, no globals, no shell: argument lists with ``cwd=``/``env=``.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from relion_zo import slurm
from relion_zo.config import Queue
from relion_zo.movies import MovieChecker, matching
from relion_zo.paths import open_append, replace_with, unsafe_reason
from relion_zo.relion_it import batches as bt
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.batches import SECOND_PASS_FILE, Reference
from relion_zo.relion_it.stages import (
    BatchPlan,
    JobRef,
    Stage,
    classifies,
    picking_stages,
    rescaled_reference,
)

log = logging.getLogger(__name__)

SCHEDULE = "PREPROCESS"  # relion_it's PREPROCESS_SCHEDULE_PASS1
SCHEDULE_PASS2 = "PREPROCESS_PASS2"
RUNNING_SCHEDULE = f"RUNNING_PIPELINER_{SCHEDULE}"  # removing it stops the run (relion_it's way)
PROJECT_MARKER = "RELION_ZO_PROJECT"  # in the environment of every process a run starts
SLURM_GONE_SECONDS = 15.0  # a cancelled Slurm job's end is waited for this long at most
STALL_SCAN_SECONDS = 5.0  # at most this long between two looks at a pass's job folders
KILL_GRACE_SECONDS = 1.0  # between SIGTERM and SIGKILL
# A file system is (nearly) full when less than this is free, or less than the fraction of its
# size for a small one.
NEARLY_FULL_BYTES = 64 * 2**20
NEARLY_FULL_FRACTION = 0.05


@dataclass
class Progress:
    movies_on_disk: int = 0
    passes: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # stage label -> movies done
    particles: int | None = None  # picked so far (AutoPick's summary.star)
    # Batch jobs: label -> what is done or running, e.g. "Class2D": "batch 1 of 2"
    batches: dict[str, str] = field(default_factory=dict)
    relion_seconds: float = 0.0  # wall time spent in RELION's own commands (pipeliner runs)
    queued: str = ""  # RELION jobs waiting in the cluster's queue, e.g. "Class2D (Slurm ...)"

    def text(self) -> str:
        if not self.counts:
            return f"setting up, {self.movies_on_disk} movies on disk"
        if self.queued:
            return f"{self._done()}; waiting in the queue: {self.queued}"
        return self._done()

    def _done(self) -> str:
        parts = []
        for label, count in self.counts.items():
            part = (f"{label} {count}" if label == "Import" else
                    f"{label} {count}/{self.counts.get('Import', 0)}")
            if label.startswith("AutoPick") and self.particles is not None:
                part += f" ({self.particles:,} particles)"
            parts.append(part)
        parts += [f"{label} {text}" for label, text in self.batches.items()]
        return ", ".join(parts)


@dataclass(frozen=True)
class DriverResult:
    outcome: str  # "finished", "stopped" or "failed"
    reason: str
    progress: Progress
    jobs: dict[str, str]


@dataclass(frozen=True)
class DriverSettings:
    project: Path
    stages: tuple[Stage, ...]
    movie_glob: str  # relative to the project, e.g. Movies/GridSquare_*/Data/*.mrc
    pipeliner: str = "relion_pipeliner"
    env: dict[str, str] | None = None
    repeat_times: int = 999
    repeat_wait_seconds: float = 60.0
    idle_seconds: float = 600.0
    poll_seconds: float = 0.2
    tick_seconds: float = 5.0
    dead_job_seconds: float = 5.0
    pass_timeout_seconds: float | None = None
    # Checks each movie before a pass may import it (None: no checks, RELION takes the glob).
    movie_checker: MovieChecker | None = None
    movie_wait_seconds: float = 120.0  # how long an incomplete movie may stay incomplete
    # A pass whose job folders change in no way for this long fails, naming the job it waits
    # for (a hung program); None: never.
    stall_seconds: float | None = 1800.0
    # relion_it's batch loop (Class2D per batch, InitialModel, Class3D) after each pass;
    # None: preprocessing only.
    batches: BatchPlan | None = None
    # relion_it's second pass: once pass 1's Class3D of batch 1 is good enough, pick with its
    # best class (needs ``batches``).
    second_pass: bool = False
    image_handler: str = "relion_image_handler"  # rescales the second pass's reference
    # The site's cluster queue: RELION submits the jobs that ask for it (relion_zo.slurm);
    # None: every RELION job runs here.
    queue: Queue | None = None
    slurm_seconds: float = 1.0  # between two looks at the queue during a pass


class _Stopped(Exception):
    pass


class _Failed(Exception):
    pass


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group (from /proc; zombies are not counted)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, grace: float = 1.0) -> None:
    """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.05)


def processes_in(folder: Path, name: str = "") -> list[int]:
    """Live processes whose working directory is ``folder`` or inside it (RELION's run in the
    project), and whose name starts with ``name``."""
    target = str(Path(folder).resolve())
    found = []
    for pid in _pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd != target and not cwd.startswith(target + "/"):
                continue
            with open(f"/proc/{pid}/comm") as handle:
                if handle.read().startswith(name):
                    found.append(pid)
        except OSError:
            continue
    return found


def _pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the name (state first); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or
    ``?``; with the pid, it names one process for the machine's uptime."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else "?"


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def project_mark(project: Path) -> str:
    """The value of ``RELION_ZO_PROJECT`` that a run in ``project`` gives what it starts."""
    return str(Path(project).resolve())


def started_for(project: Path) -> list[int]:
    """Live processes a run in ``project`` started, whatever their process group or session:
    those working in the project (as RELION's programs and MPI ranks do) that carry the mark
    in their environment. A person's shell in the project has no mark and is left alone."""
    mark = f"{PROJECT_MARKER}={project_mark(project)}".encode("utf-8", "surrogateescape")
    found = []
    for pid in processes_in(project):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if mark in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


SCHEDULER_NAMES = (b"relion_pipeliner", b"relion_it.py")


def live_schedulers(project: Path) -> list[str]:
    """``pid N (program)`` of schedulers working in ``project`` that no relion_zo run started:
    a scientist's ``relion_it.py`` or ``relion_pipeliner`` (RELION's GUI's scheduler)."""
    ours = set(started_for(project))
    found = []
    for pid in processes_in(project):
        if pid in ours or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        for name in SCHEDULER_NAMES:
            if any(arg.endswith(name) for arg in argv[:2]):
                found.append(f"pid {pid} ({name.decode()})")
                break
    return found


def refuse_if_scheduled(project: Path) -> None:
    """Two schedulers in one project undo each other's work: refuse while another is live."""
    others = live_schedulers(project)
    if others:
        raise SchedulerRunning(
            f"another scheduler is running in {project}: {', '.join(others)}; stop it (remove "
            f"its {RUNNING_FILES_TEXT}) before relion_zo carries the project on")


RUNNING_FILES_TEXT = "RUNNING_RELION_IT or RUNNING_PIPELINER_* file"


class SchedulerRunning(RuntimeError):
    """A scheduler relion_zo did not start is running in the project."""


def _protected() -> tuple[set[int], set[int]]:
    """This process and its ancestors, and their process groups: never signalled."""
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        fields = _stat_fields(pid)
        pid = int(fields[1]) if fields and len(fields) > 1 else 0
    groups = {os.getpgrp()}
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except OSError:
            continue
    return pids, groups


def end_processes(pids: Iterable[int], groups: Iterable[int] = (),
                  grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the processes ``pids`` and the process groups ``groups``, then SIGKILL what is
    left after ``grace`` seconds. Never this process, its ancestors or their groups."""
    own_pids, own_groups = _protected()
    pids = {pid for pid in pids if pid > 1 and pid not in own_pids}
    groups = {pgid for pgid in groups if pgid > 1 and pgid not in own_groups}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        deadline = time.monotonic() + grace
        while True:
            pids = {pid for pid in pids if _alive(pid)}
            groups = {pgid for pgid in groups if group_members(pgid)}
            if not pids and not groups:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)


def end_relion_in(project: Path) -> int:
    """End what a run in ``project`` left behind: every process it started (``started_for``)
    with its process group, and the RUNNING files. Never this process, its ancestors or their
    process groups. Returns how many processes were found."""
    pids = set(started_for(project))
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    if pids:
        end_processes(pids, groups)
    (project / pl.RUNNING_RELION_IT).unlink(missing_ok=True)
    remove_running_pipeliner_files(project)
    return len(pids)


def remove_running_pipeliner_files(project: Path) -> None:
    for path in project.glob(pl.RUNNING_PIPELINER + "*"):
        path.unlink(missing_ok=True)


def no_space_reason(path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs
                    ) -> str | None:
    """"no space left on the disk holding <path>" when the file system holding ``path`` is
    full or nearly so (blocks an ordinary user may take, or inodes); None when it has room or
    cannot be asked."""
    try:
        st = statvfs(path)
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if size and free < min(NEARLY_FULL_BYTES, size * NEARLY_FULL_FRACTION):
        return f"no space left on the disk holding {path}"
    if st.f_files and st.f_favail == 0:
        return f"no free inodes left on the disk holding {path}"
    return None


def write_error_reason(exc: OSError, project: Path) -> str | None:
    """The message for a write that failed for want of space (ENOSPC, EDQUOT), naming the disk
    by the project and the file when known; None for any other error."""
    if exc.errno == errno.ENOSPC:
        reason = f"no space left on the disk holding {project}"
    elif exc.errno == errno.EDQUOT:
        reason = f"disk quota exceeded on the disk holding {project}"
    else:
        return None
    return reason + (f" (writing {exc.filename})" if exc.filename else "")


class _FolderWatch:
    """Tells cheaply whether anything changed in some folders since the last look.

    Each look stats every directory (a file created, removed or renamed changes its folder's
    time) and the files directly in each folder watched (``run.out``, ``run.err``, the STAR
    files and the exit files: the ones that grow). A directory is listed again only when its
    time has changed (or is too recent to trust)."""

    def __init__(self) -> None:
        self.listed: dict[str, tuple[int, list[str], list[str]]] = {}

    def signature(self, folders: Iterable[Path]) -> tuple:
        parts: list[tuple] = []
        for folder in folders:
            top = str(folder)
            pending = [top]
            while pending:
                path = pending.pop()
                try:
                    mtime = os.stat(path).st_mtime_ns
                except OSError:
                    parts.append((path, None))
                    continue
                parts.append((path, mtime))
                dirs, files = self._listing(path, mtime)
                pending.extend(dirs)
                if path == top:
                    for name in files:
                        try:
                            st = os.stat(name)
                        except OSError:
                            continue
                        parts.append((name, st.st_size, st.st_mtime_ns))
        return tuple(parts)

    def _listing(self, path: str, mtime: int) -> tuple[list[str], list[str]]:
        cached = self.listed.get(path)
        if cached and cached[0] == mtime and time.time_ns() - mtime > 2 * 10**9:
            return cached[1], cached[2]
        dirs, files = [], []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    (dirs if is_dir else files).append(entry.path)
        except OSError:
            pass
        self.listed[path] = (mtime, dirs, files)
        return dirs, files


class _StallWatch:
    """Notices a pass that makes no progress: its waiting jobs' folders unchanged (see
    ``_FolderWatch``) and no exit file new for ``limit`` seconds. Looks at most every
    ``STALL_SCAN_SECONDS`` (sooner for a small limit)."""

    def __init__(self, project: Path, names: list[str], limit: float | None, now: float):
        self.project, self.names, self.limit = project, names, limit
        self.every = min(STALL_SCAN_SECONDS, limit / 4) if limit else None
        self.next_look = now
        self.last_change = now
        self.signature: tuple | None = None
        self.folders = _FolderWatch()

    def still(self, now: float) -> None:
        """The pass waits for something outside it (the cluster's queue): not a hang."""
        self.last_change = now

    def stuck(self, now: float) -> str | None:
        """The job the pass waits for when it has made no progress for ``limit`` s, else None."""
        if self.every is None or now < self.next_look:
            return None
        self.next_look = now + self.every
        states = [pl.exit_state(self.project, job) for job in self.names]
        waiting = [job for job, state in zip(self.names, states) if state is None]
        signature = (tuple(states), self.folders.signature(self.project / job for job in waiting))
        if signature != self.signature:
            self.signature, self.last_change = signature, now
            return None
        if now - self.last_change < self.limit:
            return None
        return waiting[0] if waiting else "relion_pipeliner"


class _QueueWatch:
    """The Slurm jobs RELION submits during one pipeliner run (``relion_zo.slurm``): each one
    noted with its id and RELION job once; those waiting shown in the progress; one that
    Slurm ends as failed or cancelled before its RELION job wrote an exit file fails the
    run, naming both; those still queued or running cancelled when the run ends. Jobs Slurm
    knew before the run (an earlier pass's) are not this run's."""

    def __init__(self, project: Path, queue: Queue, names: list[str], note, record,
                 every: float, job_failure, lookup=slurm.project_jobs, cancel=slurm.cancel):
        self.project, self.queue, self.names, self.note = project, queue, names, note
        self.record = record
        self.every, self.job_failure = every, job_failure
        self.lookup, self._cancel = lookup, cancel
        self.next_look = 0.0
        self.current: list[slurm.SlurmJob] = []
        self.warned = False
        self.before = {job.job_id for job in self._jobs()}
        self.noted: set[str] = set()
        self.waiting_text = ""

    def _jobs(self) -> list[slurm.SlurmJob]:
        try:
            jobs = self.lookup(self.project, self.queue)
        except slurm.SlurmError as exc:
            if not self.warned:
                self.note(f"cannot read the cluster's queue now: {exc}")
            self.warned = True
            return self.current
        self.warned = False
        return jobs

    def look(self, now: float) -> list[slurm.SlurmJob]:
        """This run's Slurm jobs (looked up at most every ``every`` s); raises ``_Failed``."""
        if now < self.next_look:
            return self.current
        self.next_look = now + self.every
        self.current = [job for job in self._jobs() if job.job_id not in self.before
                        and job.relion_job in self.names]
        for job in self.current:
            if job.job_id not in self.noted:
                self.noted.add(job.job_id)
                self.note(f"{job.relion_job} runs as Slurm job {job.job_id}")
                self.record(f"{job.relion_job} runs as Slurm job {job.job_id}")
        for job in self.current:
            if job.failed and pl.exit_state(self.project, job.relion_job) is None:
                raise _Failed(self.job_failure(job.relion_job, f"ended as {job.describe()}",
                                               with_error=False))
        return self.current

    def waiting(self) -> str:
        return ", ".join(f"{job.relion_job.rstrip('/')} ({job.describe()})"
                         for job in self.current if job.waiting)

    def cancel(self) -> list[str]:
        """Cancel what is still queued or running (it cannot outlive the run); their ids."""
        self.next_look = 0.0
        try:
            self.look(time.monotonic())
        except _Failed:
            pass
        active = [job.job_id for job in self.current if job.active]
        if active:
            try:
                self._cancel(active, self.queue)
                self.note(f"cancelled Slurm job(s) {', '.join(active)}")
            except slurm.SlurmError as exc:
                self.note(f"could not cancel Slurm job(s) {', '.join(active)}: {exc}")
                return []
        return active

    def wait_gone(self, ids: list[str], limit: float = SLURM_GONE_SECONDS) -> None:
        """Until Slurm has ended the cancelled jobs (``COMPLETING`` while slurmd kills their
        processes), so the run's final status comes after them; at most ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while ids:
            still = [job.job_id for job in self._jobs() if job.job_id in ids and job.active]
            if not still:
                return
            if time.monotonic() > deadline:
                self.note(f"Slurm job(s) {', '.join(still)} still ending after {limit:.0f} s")
                return
            time.sleep(0.1)


def movies_on_disk(project: Path, movie_glob: str) -> int:
    """Movies RELION's glob would import (``glob(3)`` rules: no hidden files)."""
    return len(matching(project, movie_glob))


class _Run:
    """State of one driver run; all of it dies with the run."""

    def __init__(self, settings: DriverSettings, should_stop, on_tick, note,
                 on_results=lambda jobs: None, record=lambda text: None):
        self.s = settings
        self.record = record
        self.should_stop = should_stop
        self.on_tick = on_tick
        self.on_results = on_results
        self.note = note
        self.progress = Progress()
        self.jobs: dict[str, str] = {}
        self.last_tick = float("-inf")
        self.waiting_since: dict[str, float] = {}  # incomplete movie -> when first seen
        self.imported_checked = 0  # rows of Import's movies.star already checked
        self.previous_batch1_size: int | None = None  # relion_it's, read on the first look
        self.reference: str | None = None  # the Class3D reference, once InitialModel made it
        # The pass being run: its preprocessing jobs, its schedule and its batch jobs
        self.stages: list[Stage] = list(settings.stages)
        self.schedule = SCHEDULE
        self.plan: BatchPlan | None = settings.batches

    # -- checks that run all the time
    def check_stop(self, pass_jobs: list[str] | None = None) -> None:
        """Raise ``_Stopped`` when a user stopped the run. ``RUNNING_PIPELINER_PREPROCESS``
        counts as removed by a user between passes, and during a pass (``pass_jobs``) only
        while some of its jobs have not ended: the pipeliner removes it itself once all have."""
        project = self.s.project
        if not (project / pl.RUNNING_RELION_IT).exists():
            raise _Stopped(f"{pl.RUNNING_RELION_IT} was removed")
        running = self.running_file
        if not (project / running).exists() and (pass_jobs is None or any(
                pl.exit_state(project, job) is None for job in pass_jobs)):
            raise _Stopped(f"{running} was removed")
        if self.should_stop():
            raise _Stopped("stop requested")

    @property
    def running_file(self) -> str:
        """The stop file of the pass being run (``RUNNING_PIPELINER_PREPROCESS``, or
        ``..._PREPROCESS_PASS2`` in the second pass), as relion_it's pipeliners keep them."""
        return pl.RUNNING_PIPELINER + self.schedule

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_tick >= self.s.tick_seconds:
            self.last_tick = now
            self.refresh_counts()
            self.on_tick(self.progress)

    def refresh_counts(self) -> None:
        self.progress.movies_on_disk = movies_on_disk(self.s.project, self.s.movie_glob)
        counts = {}
        for stage in self.stages:
            job = self.jobs.get(stage.name_in_script)
            if job and stage.counts:
                path = self.s.project / job / stage.output_star
                if stage.counts == "picked":  # one read: a row per movie, its particles
                    picked = pl.star_column(path, stage.output_block, "_rlnGroupNrParticles")
                    counts[stage.label] = len(picked)
                    self.progress.particles = sum(int(n) for n in picked if n.isdigit())
                else:
                    counts[stage.label] = pl.star_count(path, stage.output_block)
        self.progress.counts = counts

    # -- set-up
    def add_jobs(self) -> None:
        for stage in self.stages:
            self.ensure_job(stage)

    def ensure_job(self, stage: Stage) -> bool:
        """The project's job for ``stage``: the one ``RELION_IT_SUBMITTED_JOBS`` names if the
        pipeline still has it, else a new one (recorded there). True when it was added now."""
        submitted = pl.read_submitted(self.s.project)
        job = submitted.get(stage.name_in_script)
        added = not (job and job in set(pl.process_names(self.s.project)))
        if not added:
            if self.jobs.get(stage.name_in_script) != job:  # said once per run, not per pass
                self.note(f"reusing {job} for {stage.name_in_script}")
        else:
            options = [
                (label, value.resolve(self.jobs) if isinstance(value, JobRef) else value)
                for label, value in stage.options
            ]
            started = time.monotonic()
            job = pl.add_job(self.s.pipeliner, self.s.project, stage.job_type, options,
                             self.env(), alias=stage.alias)
            self.progress.relion_seconds += time.monotonic() - started
            pl.record_submitted(self.s.project, stage.name_in_script, job)
            self.note(f"added {job} for {stage.name_in_script}")
        self.jobs[stage.name_in_script] = job
        return added

    def env(self) -> dict[str, str]:
        env = dict(self.s.env if self.s.env is not None else os.environ)
        env[PROJECT_MARKER] = project_mark(self.s.project)  # how its leftovers are found
        env = slurm.environment(self.s.queue, env)  # sbatch's cluster
        if os.geteuid() == 0:  # mpirun refuses to start as root without these
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        return env

    # -- movies
    def movies_ready(self) -> bool:
        """True when every movie on disk may be imported now. A refused movie fails the run
        (RELION's glob would import it); one still arriving is waited for, up to
        ``movie_wait_seconds``."""
        checker = self.s.movie_checker
        if checker is None:
            return True
        names = matching(self.s.project, self.s.movie_glob)
        now = time.monotonic()
        waiting = set()
        for problem in checker.problems(self.s.project, names):
            if not problem.may_still_arrive:
                raise _Failed(f"{problem.text()}; refused before import")
            first = self.waiting_since.setdefault(problem.name, now)
            if now - first > self.s.movie_wait_seconds:
                raise _Failed(f"{problem.text()} for {self.s.movie_wait_seconds:.0f} s; "
                              "refused before import")
            waiting.add(problem.name)
        self.waiting_since = {k: v for k, v in self.waiting_since.items() if k in waiting}
        return not waiting

    def check_imported_names(self) -> None:
        """A movie that appeared between the check and RELION's glob is named in Import's
        output: refuse the pass at once if its name is not safe."""
        job = self.jobs.get(self.stages[0].name_in_script) if self.stages else None
        if self.s.movie_checker is None or not job:
            return
        names = pl.star_column(self.s.project / job / "movies.star", "movies",
                               "_rlnMicrographMovieName")
        for name in names[self.imported_checked:]:
            reason = unsafe_reason(name)
            if reason:
                raise _Failed(f"movie {name!r} {reason}; it arrived during a pass")
        self.imported_checked = len(names)

    # -- one scheduler pass
    def run_pass(self) -> None:
        """One pass of the preprocessing jobs over every movie on disk."""
        self.run_jobs(self.schedule, [self.jobs[st.name_in_script] for st in self.stages],
                      movies=True)

    def run_jobs(self, schedule: str, names: list[str], *, movies: bool = False) -> None:
        """One ``relion_pipeliner --schedule`` run over ``names`` (the jobs of a preprocessing
        pass when ``movies``), watched until it ends; raises when it fails or is stopped."""
        project = self.s.project
        pl.clear_stale_lock(project)
        for job in names:  # fresh exit files tell this pass's outcome apart from the last one's
            pl.clear_exit_files(project, job)
        argv = pl.schedule_argv(self.s.pipeliner, schedule, names)
        if movies:
            self.progress.passes += 1
        queue = (_QueueWatch(project, self.s.queue, names, self.note, self.record,
                             self.s.slurm_seconds, self.job_failure) if self.s.queue else None)
        started = time.monotonic()
        with open_append(project / "relion_zo_pipeliner.log", "pipeliner log", "ab") as out:
            proc = subprocess.Popen(argv, cwd=project, env=self.env(), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pgid = proc.pid
        alone_since: float | None = None
        stall = _StallWatch(project, names, self.s.stall_seconds, started)
        try:
            while proc.poll() is None:
                self.check_stop(names)
                self.tick()
                if movies and pl.exit_state(project, names[0]) == "success":
                    self.check_imported_names()
                queued = queue.look(time.monotonic()) if queue else []
                if queue:
                    self.progress.queued = queue.waiting()
                if any(job.waiting for job in queued):
                    stall.still(time.monotonic())  # waiting for the cluster is not a hang
                others = [pid for pid in group_members(pgid) if pid != proc.pid]
                if others or any(job.active for job in queued):
                    alone_since = None
                elif alone_since is None:
                    alone_since = time.monotonic()
                elif time.monotonic() - alone_since > self.s.dead_job_seconds:
                    waiting = [j for j in names if pl.exit_state(project, j) is None]
                    if waiting:
                        raise _Failed(self.job_failure(
                            waiting[0], f"ended without {pl.EXIT_SUCCESS} or {pl.EXIT_FAILURE}"))
                stuck = stall.stuck(time.monotonic())
                if stuck:
                    raise _Failed(self.job_failure(
                        stuck, f"made no progress for {self.s.stall_seconds:g} s "
                        "(stall_seconds)", with_error=False))
                limit = self.s.pass_timeout_seconds
                if limit is not None and time.monotonic() - started > limit:
                    raise _Failed(f"a pipeliner pass took longer than {limit:.0f} s")
                time.sleep(self.s.poll_seconds)
        finally:
            # Whatever ended the pass: nothing it started may outlive it (MPI ranks run in
            # process groups of their own, out of the pipeliner's group's reach; the jobs it
            # submitted to the cluster's queue).
            cancelled = queue.cancel() if queue else []
            self.progress.queued = ""
            leftovers = set(group_members(pgid)) | set(started_for(project))
            if proc.poll() is None:
                leftovers.add(proc.pid)
            if leftovers:
                end_processes(leftovers, {pgid})
            proc.wait()
            if queue:
                queue.wait_gone(cancelled)
            self.progress.relion_seconds += time.monotonic() - started
            pl.clear_stale_lock(project)
        self.check_stop(names)
        # The pipeliner removes its RUNNING_PIPELINER_PREPROCESS after a pass; relion_it's
        # (repeating) pipeliner keeps it while it schedules: so does this run.
        open_append(project / self.running_file, self.running_file).close()
        if movies:
            self.check_imported_names()
        for job in names:
            state = pl.exit_state(project, job)
            if state in ("failure", "aborted"):
                raise _Failed(self.job_failure(job, state))
        if proc.returncode != 0:
            what = f"relion_pipeliner exited with status {proc.returncode}"
            full = no_space_reason(project)
            raise _Failed(f"{what}: {full}" if full else what)

    # -- relion_it's batch loop (relion_it.py 1775-2115)
    def classify(self) -> None:
        """Run every batch job relion_it's rules make due now, one pipeliner run each, in
        relion_it's order. relion_it runs this loop beside its preprocessing pipeliner; here
        it runs after each preprocessing pass, so the two never compete for the cores. In pass
        1, a Class3D of batch 1 better than ``minimum_resolution_3dref_2ndpass`` moves the run
        on to the second pass (with ``do_second_pass``)."""
        plan = self.plan
        split = self.jobs.get("split2_job" if plan and plan.second else "split_job")
        if plan is None or split is None:
            return
        p, project = plan.params, self.s.project
        if self.previous_batch1_size is None:  # a restart carries on from batch 1's size
            first = bt.batch_file(project, split, 1)
            recorded = plan.first_class2d in pl.read_submitted(project)
            self.previous_batch1_size = (bt.batch_size(project, first)
                                         if recorded and first else 0)
        total = bt.batch_count(project, split)
        for number in range(1, total + 1):
            name = bt.batch_file(project, split, number)
            if name is None:
                continue
            size = bt.batch_size(project, name)
            rerun = (number == 1 and size > self.previous_batch1_size
                     and size > p.minimum_batch_size)
            if rerun:
                self.previous_batch1_size = size
            particles = name
            where = f"batch {number} of {total}"
            if rerun or size == plan.full_size:
                if p.do_discard_on_image_statistics:
                    job = self.batch_job(plan.discard(name), "DISCARD", where, rerun)
                    particles = f"{job}particles.star"
                if plan.do_class2d:
                    self.batch_job(plan.class2d(number, particles, size), "CLASS2D", where,
                                   rerun)
            if not plan.do_class3d:
                continue
            if (not plan.second and self.reference is None and number == 1
                    and size == p.batch_size):
                job = self.batch_job(plan.inimodel(particles), "INIMODEL", where, False)
                self.reference = self.best_class(job, "InitialModel").map
            if self.reference is None:
                continue
            job = self.batch_job(plan.class3d(number, particles, size, self.reference),
                                 "CLASS3D", where, rerun)
            best = self.best_class(job, "Class3D")
            if (not plan.second and self.s.second_pass and number == 1
                    and best.resolution < p.minimum_resolution_3dref_2ndpass):
                self.start_second_pass(Reference(best.map, best.angpix))
                return

    def batch_job(self, stage: Stage, schedule: str, where: str, rerun: bool) -> str:
        """Add ``stage``'s job unless the project has it; run it when new, when relion_it
        re-runs batch 1, or when an earlier run was stopped before it ended."""
        added = self.ensure_job(stage)
        job = self.jobs[stage.name_in_script]
        if added or rerun or pl.exit_state(self.s.project, job) != "success":
            self.progress.batches[stage.label] = f"{where} running"
            self.tick(force=True)
            self.run_jobs(schedule, [job])
            self.note(f"{stage.label} {where}: {job} done")
            self.on_results(dict(self.jobs))
        self.progress.batches[stage.label] = where
        return job

    def best_class(self, job: str, label: str) -> bt.BestClass:
        """The best class of a finished InitialModel or Class3D job."""
        model = bt.output_model_star(self.s.project, job)
        best = bt.best_class(self.s.project, model) if model else None
        if best is None:
            raise _Failed(f"{label} {job} ended without the model and maps it should make")
        return best

    # -- relion_it's second pass (relion_it.py 1515-1540, 2084-2109)
    def start_second_pass(self, reference: Reference) -> None:
        """Move on to the second pass, as relion_it does once pass 1's batch 1 has a good
        enough 3D class: the first pass's preprocessing stops (its RUNNING file removed),
        ``RELION_IT_2NDPASS_3DREF`` records the reference, and from the next pass on the
        movies are picked with it."""
        project = self.s.project
        self.schedule = SCHEDULE_PASS2
        open_append(project / self.running_file, self.running_file).close()
        (project / RUNNING_SCHEDULE).unlink(missing_ok=True)
        replace_with(project / SECOND_PASS_FILE, bt.reference_text(reference), SECOND_PASS_FILE)
        self.note(f"second pass: picking with {reference.map} (pixel size {reference.angpix} Å)")
        self.enter_second_pass(reference)

    def resume_second_pass(self) -> None:
        """A run in a project whose second pass has begun (``RELION_IT_2NDPASS_3DREF``) goes
        straight to it, as relion_it does; pass 1's picking and batches are not run again."""
        if not self.s.second_pass or self.s.batches is None:
            return
        try:
            reference = bt.read_reference(self.s.project)
        except ValueError as exc:
            raise _Failed(str(exc)) from None
        if reference is not None:
            self.schedule = SCHEDULE_PASS2
            self.note(f"second pass: carrying on, picking with {reference.map}")
            self.enter_second_pass(reference)

    def enter_second_pass(self, reference: Reference) -> None:
        """The second pass's jobs: pass 1's Import, MotionCorr and CtfFind, then picking with
        ``reference``, and its own batch jobs."""
        assert self.s.batches is not None
        p = self.s.batches.params
        picking = [i for i, st in enumerate(self.stages) if st.name_in_script == "autopick_job"]
        self.stages = self.stages[:picking[0]] + picking_stages(p, reference)
        self.plan = BatchPlan(p, second=True) if classifies(p, second=True) else None
        self.previous_batch1_size = None
        self.reference = reference.map
        for stage in self.stages:
            self.ensure_job(stage)
        if self.plan is not None:
            self.reference = self.rescale(p, reference)
        self.tick(force=True)

    def rescale(self, p, reference: Reference) -> str:
        """The second pass's Class3D reference: pass 1's best class rescaled to the second
        pass's particles with ``relion_image_handler`` where their pixel sizes differ."""
        target, angpix, box = rescaled_reference(p, reference)
        if not box:
            return target
        argv = [self.s.image_handler, "--i", reference.map, "--o", target, "--angpix",
                reference.angpix, "--rescale_angpix", str(angpix), "--new_box", str(box)]
        started = time.monotonic()
        done = subprocess.run(argv, cwd=self.s.project, env=self.env(), check=False,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=600)
        self.progress.relion_seconds += time.monotonic() - started
        if done.returncode != 0 or not (self.s.project / target).is_file():
            error = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise _Failed(f"relion_image_handler could not rescale {reference.map} to "
                          f"{angpix:g} Å: {error[0]}")
        self.note(f"second pass: {reference.map} rescaled to {angpix:g} Å in a box of {box} "
                  f"as {target}")
        return target

    def job_failure(self, job: str, what: str, *, with_error: bool = True) -> str:
        """Why ``job`` failed: ``<job> <what>: <RELION's error>``; on a (nearly) full disk
        ``<job> failed: no space left on the disk holding <project>``, as RELION often leaves
        ``run.err`` empty then."""
        error = pl.job_error(self.s.project, job) if with_error else ""
        full = no_space_reason(self.s.project)
        if full:
            details = [what] if what != "failure" else []
            if error and error not in ("run.err is empty", "no run.err"):
                details.append(error)
            return f"{job} failed: {full}" + (f" ({'; '.join(details)})" if details else "")
        return f"{job} {what}: {error}" if error else f"{job} {what}"

    def all_processed(self) -> bool:
        counts = self.progress.counts
        imported = counts.get("Import", 0)
        return imported >= self.progress.movies_on_disk and all(
            count >= imported for count in counts.values()
        )

    def wait_between_passes(self, since_new: float) -> None:
        """Wait up to the repeat wait; a new movie starts the next pass at once."""
        deadline = time.monotonic() + self.s.repeat_wait_seconds
        seen = self.progress.movies_on_disk
        while time.monotonic() < deadline:
            self.check_stop()
            self.tick()
            if movies_on_disk(self.s.project, self.s.movie_glob) > seen:
                return
            if self.all_processed() and time.monotonic() - since_new >= self.s.idle_seconds:
                return
            time.sleep(self.s.poll_seconds)

    def wait_for_movies(self) -> None:
        """Poll until every movie on disk may be imported (or the run is stopped)."""
        while not self.movies_ready():
            self.check_stop()
            self.tick()
            time.sleep(self.s.poll_seconds)

    def run(self) -> DriverResult:
        project = self.s.project
        try:
            refuse_if_scheduled(project)
            pl.ensure_pipeline(project)
            # Both of relion_it's stop files: RUNNING_RELION_IT for relion_it itself, and the
            # one its pipeliner (run with --repeat > 1) keeps while it schedules.
            open_append(project / pl.RUNNING_RELION_IT, "RUNNING_RELION_IT").close()
            self.resume_second_pass()
            open_append(project / self.running_file, self.running_file).close()
            self.check_stop()
            self.add_jobs()
            self.tick(force=True)
            last_seen = -1
            since_new = time.monotonic()
            for _ in range(self.s.repeat_times):
                self.check_stop()
                self.wait_for_movies()
                if not movies_on_disk(self.s.project, self.s.movie_glob):
                    # Nothing to import (a session that has not begun): no pipeliner run,
                    # RELION's Import would find nothing; the idle rule still ends the run.
                    if time.monotonic() - since_new >= self.s.idle_seconds:
                        return self.finished(f"no movies for {self.s.idle_seconds:.0f} s")
                    self.wait_between_passes(since_new)
                    continue
                before = dict(self.progress.counts)
                self.run_pass()
                self.on_results(dict(self.jobs))  # recorded before the beat that reports them
                self.tick(force=True)
                self.classify()
                seen = self.progress.movies_on_disk
                if seen > last_seen:
                    last_seen, since_new = seen, time.monotonic()
                self.note(f"pass {self.progress.passes}: {self.progress.text()}")
                if self.all_processed():
                    self.wait_between_passes(since_new)  # returns at once when already idle
                    self.refresh_counts()
                    if (self.progress.movies_on_disk == last_seen and self.all_processed()
                            and time.monotonic() - since_new >= self.s.idle_seconds):
                        return self.finished(f"no new movies for {self.s.idle_seconds:.0f} s")
                elif self.progress.counts == before:
                    # Nothing new came of this pass: wait for a movie or the repeat wait
                    # rather than start the same pass again at once.
                    self.wait_between_passes(float("inf"))
            return self.finished(f"{self.s.repeat_times} passes done")
        except _Stopped as exc:
            return self.result("stopped", str(exc))
        except (_Failed, SchedulerRunning) as exc:
            return self.result("failed", str(exc))
        except pl.PipelinerError as exc:
            return self.result("failed", str(exc))
        except OSError as exc:
            reason = write_error_reason(exc, project)
            if reason is None:
                raise
            return self.result("failed", reason)
        finally:
            slurm.cancel_project(project, self.s.queue)  # whatever a pass could not cancel
            end_relion_in(project)  # also removes RUNNING_RELION_IT and RUNNING_PIPELINER_*

    def finished(self, reason: str) -> DriverResult:
        """Success only when work was done: a run that imported no movie is a failure."""
        self.refresh_counts()
        if not self.progress.counts.get("Import"):
            return self.result("failed", f"no movie was imported: {self.s.movie_glob} matched "
                               f"{self.progress.movies_on_disk} file(s) RELION could import")
        return self.result("finished", reason)

    def result(self, outcome: str, reason: str) -> DriverResult:
        self.refresh_counts()
        try:
            self.note(f"{outcome}: {reason} ({self.progress.text()})")
            self.note(f"RELION's commands took {self.progress.relion_seconds:.2f} s of the run")
        except OSError as exc:  # the run log may be on the disk that is full
            log.warning("could not note the end of the run (%s): %s", exc, reason)
        return DriverResult(outcome, reason, self.progress, dict(self.jobs))


def run_driver(
    settings: DriverSettings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_tick: Callable[[Progress], None] = lambda progress: None,
    note: Callable[[str], None] = log.info,
    on_results: Callable[[dict[str, str]], None] = lambda jobs: None,
    record: Callable[[str], None] = lambda text: None,
) -> DriverResult:
    """Run preprocessing in ``settings.project`` until it finishes, is stopped, or fails.
    ``on_results(jobs)`` is called with relion_it's names of the project's jobs after each
    pass and each batch job, before the progress that reports them. ``record(text)`` keeps
    what the job's record must show beyond the run log (the Slurm job of each RELION job)."""
    try:
        settings.project.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = write_error_reason(exc, settings.project)
        if reason is None:
            raise
        return DriverResult("failed", reason, Progress(), {})
    return _Run(settings, should_stop, on_tick, note, on_results, record).run()
