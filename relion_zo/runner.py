"""Run one processing job: load, claim, check, build the project, drive RELION, finish.

``run_job`` is the plain function behind the zocalo wrapper and ``relion-zo run``. Its side
effects come in as arguments (the database engine, the site configuration, a stop flag and a
progress callback), so it runs the same under zocalo, from a shell, or in a test.

Every path through it that has claimed a program ends with exactly one final status:
success (1), stopped (1, message ``Stopped by user...``) or failure (0, reason in the message
and an ``AutoProcProgramMessage`` ERROR row).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from relion_zo import __version__, jobs, programs, project
from relion_zo.config import SiteConfig
from relion_zo.errors import ForeignJobError, RelionZoError
from relion_zo.movies import MovieChecker
from relion_zo.paths import open_append
from relion_zo.relion_it import options as options_mod
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.driver import DriverResult, DriverSettings, Progress, run_driver
from relion_zo.relion_it.stages import check_capabilities, stages

log = logging.getLogger(__name__)

RUN_LOG = "relion_zo_run.log"


class StopRequest(threading.Event):
    """A stop flag with why it was set; ``as_failure`` when the cause is not a user's stop
    (the worker that started the run died)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.as_failure = False

    def request(self, reason: str, *, as_failure: bool = False) -> None:
        self.reason, self.as_failure = reason, as_failure
        self.set()


@dataclass(frozen=True)
class RunOutcome:
    processing_job_id: int
    auto_proc_program_id: int | None
    state: str  # "success", "stopped", "failure" or "skipped"
    message: str
    project: Path | None = None


class _RunLog:
    """The job's own log file in the project, plus the module logger."""

    def __init__(self, pjid: int):
        self.pjid = pjid
        self.path: Path | None = None
        self.buffer: list[str] = []

    def open(self, path: Path) -> None:
        with open_append(path, "run log") as handle:
            handle.writelines(self.buffer)
        self.path = path
        self.buffer.clear()

    def __call__(self, message: str) -> None:
        log.info("job %s: %s", self.pjid, message)
        line = f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} {message}\n"
        if self.path is None:
            self.buffer.append(line)
        else:
            with open_append(self.path, "run log") as handle:
                handle.write(line)


def environment_text() -> str:
    return f"host={socket.gethostname()} pid={os.getpid()} relion_zo={__version__}"


def prepare_project(
    spec: jobs.JobSpec, config: SiteConfig, note, *, resume: bool = False
) -> tuple[Path, DriverSettings]:
    """Everything that touches disk before RELION starts; raises RelionZoError on bad input.
    ``resume``: carry on in this job's own existing project (refused for any other folder)."""
    params = spec.parameters
    check_capabilities(params, config)
    jobs.check_movies_folder(config, spec.visit_directory, spec.image_directory)
    jobs.check_template(spec.file_template)  # the row may come from another tool
    jobs.check_parameters_on_disk(params, spec.visit_directory)
    folder = project.project_directory(config, spec.visit_directory, spec.processing_job_id)
    glob = project.movies_glob(params.import_images, spec.image_directory, spec.file_template)
    project.create_project(folder, [spec.visit_directory, *config.data_roots],
                           spec.processing_job_id, resume=resume)
    note(f"project {folder}")
    project.link_movies(folder, spec.image_directory)
    gain = ""
    if params.motioncor_gainreference:
        checked = project.check_gain_reference(params.motioncor_gainreference, spec.visit_directory)
        gain = project.copy_gain(folder, checked)
        note(f"gain reference {checked} copied to {gain}")
    defect = ""
    if params.motioncor_defectfile:  # RELION runs in the project: give it the checked path
        defect = str(project.visit_file(params.motioncor_defectfile, spec.visit_directory,
                                        "defect file"))
    overrides = {
        "import_images": glob,
        "motioncor_gainreference": gain,
        "motioncor_defectfile": defect,
        "motioncor_exe": config.executables.motioncor2 or "",
        "ctffind4_exe": config.executables.ctffind or "",
        "images_are_movies": True,
    }
    text = options_mod.options_text(params, overrides, processing_job_id=spec.processing_job_id)
    options_mod.write_options(folder, text)
    settings = DriverSettings(
        project=folder,
        stages=tuple(stages(params, config, glob, gain, defect)),
        movie_glob=glob,
        pipeliner=config.executables.relion_pipeliner,
        repeat_times=params.preprocess_repeat_times,
        repeat_wait_seconds=params.preprocess_repeat_wait * 60,
        idle_seconds=config.idle_seconds,
        tick_seconds=min(config.heartbeat_seconds, 5.0),
        movie_checker=MovieChecker([spec.visit_directory]),
        movie_wait_seconds=config.movie_wait_seconds,
    )
    return folder, settings


def run_job(
    processing_job_id: int,
    *,
    engine: Engine,
    config: SiteConfig,
    stop: StopRequest | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    command_line: str | None = None,
    program_id: int | None = None,
) -> RunOutcome:
    """Run job ``processing_job_id`` to its end. Unknown ids raise ``NotFoundError``.

    ``program_id``: a program the caller has already claimed for this job (the worker claims
    before it starts a wrapper process); without it, the run claims one itself.
    """
    stop = stop or StopRequest()
    note = _RunLog(processing_job_id)
    with Session(engine, expire_on_commit=False) as db:
        try:
            spec = jobs.load_job(db, config, processing_job_id)
            load_error = None
        except (jobs.NotFoundError, ForeignJobError):  # not ours to claim or to fail
            raise
        except RelionZoError as exc:  # a job that exists but whose stored rows are bad
            spec, load_error = None, exc
        program = program_id or programs.claim(
            db,
            processing_job_id,
            command_line=command_line or f"relion-zo run {processing_job_id}",
            environment=environment_text(),
        )
        if program is None:
            note("the job already has a program; not running it again")
            return RunOutcome(processing_job_id, None, "skipped", "already has a program")
        if not programs.mark_running(db, program, "setting up"):
            note(f"program {program} already has a final status (stopped before it started?)")
            return RunOutcome(processing_job_id, program, "skipped", "already final")
        folder: Path | None = None
        try:
            if load_error is not None:
                raise load_error
            folder, settings = prepare_project(spec, config, note)
            note.open(folder / RUN_LOG)
            programs.attach(db, program, folder / options_mod.OPTIONS_FILE, "Input", 1)
            last_beat = [0.0]

            def on_tick(progress: Progress) -> None:
                if on_progress:
                    on_progress(progress)
                now = time.monotonic()
                if now - last_beat[0] >= config.heartbeat_seconds:
                    last_beat[0] = now
                    try:
                        programs.heartbeat(db, program, progress.text())
                    except Exception:  # a database hiccup must not kill the RELION run
                        log.exception("job %s: heartbeat failed", processing_job_id)
                        db.rollback()

            result = run_driver(settings, should_stop=stop.is_set, on_tick=on_tick, note=note)
            return _finish(db, program, processing_job_id, result, folder, stop)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, RelionZoError) else (
                f"{type(exc).__name__}: {exc}")
            if isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            note(f"failed: {reason}")
            db.rollback()
            programs.finish(db, program, success=False, message=reason)
            programs.add_message(db, program, "ERROR", reason, description=repr(exc))
            if folder is not None:
                _attach_results(db, program, folder)
            if isinstance(exc, (RelionZoError, OSError)):
                return RunOutcome(processing_job_id, program, "failure", reason, folder)
            raise


def _attach_results(db: Session, program: int, folder: Path) -> None:
    for name, kind, rank in ((pl.PIPELINE_STAR, "Result", 2), (RUN_LOG, "Log", 3)):
        if (folder / name).exists():
            programs.attach(db, program, folder / name, kind, rank)


def _finish(
    db: Session, program: int, pjid: int, result: DriverResult, folder: Path,
    stop: StopRequest,
) -> RunOutcome:
    summary = result.progress.text()
    if result.outcome == "finished":
        programs.finish(db, program, success=True, message=summary)
        state, message = "success", summary
    elif result.outcome == "stopped" and stop.as_failure:
        # Not a user's stop: e.g. the worker that started this run died.
        message = f"{stop.reason}; {summary}"
        programs.finish(db, program, success=False, message=message)
        programs.add_message(db, program, "ERROR", message, description=stop.reason)
        state = "failure"
    elif result.outcome == "stopped":
        how = stop.reason or ("interrupted" if stop.is_set() else "RUNNING_RELION_IT removed")
        message = f"{how}; {summary}"
        programs.finish_stopped(db, program, message)
        state, message = "stopped", f"Stopped by user: {message}"
    else:
        message = f"{result.reason}"
        programs.finish(db, program, success=False, message=message)
        programs.add_message(db, program, "ERROR", message[:200], description=result.reason)
        state = "failure"
    _attach_results(db, program, folder)
    return RunOutcome(pjid, program, state, message, folder)


def run_job_until_signalled(
    processing_job_id: int, *, parent_pid: int | None = None, **kwargs
) -> RunOutcome:
    """``run_job`` with SIGTERM and SIGINT turned into a stop: the driver ends its RELION
    processes, the final status says which signal stopped it, and the call returns.

    ``parent_pid``: the worker that started this process. A signal that arrives after it died
    (the child asks the kernel for SIGTERM when its parent dies) ends the run as a failure.
    """
    import signal

    stop = kwargs.pop("stop", None) or StopRequest()

    def handler(signum, frame):
        if parent_pid is not None and os.getppid() != parent_pid:
            stop.request(f"the worker (pid {parent_pid}) that ran this job died",
                         as_failure=True)
        else:
            stop.request(f"{signal.Signals(signum).name} received")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        return run_job(processing_job_id, stop=stop, **kwargs)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
