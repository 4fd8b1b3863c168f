"""Run one processing job: load, claim, check, build the project, drive RELION, finish.

``run_job`` is the plain function behind the zocalo wrapper, the worker's wrapper processes and
``relion-zo run``/``resume``. Its side effects come in as arguments (the database engine, the
site configuration, a stop flag and a progress callback), so it runs the same under zocalo,
from a shell, or in a test. Every state change goes through ``relion_zo.manager.JobManager``.

While RELION runs, the wrapper beats every ``heartbeat_seconds`` and asks the manager every
second whether it must end (a stop requested in ISPyB, or the job closed elsewhere); a database
outage only skips beats. Every path that has claimed a program ends with exactly one final
status, an ``Outcome`` (success, stopped, failed, bad input, shutdown, crashed), written with
retries through an outage.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from relion_zo import __version__, images, jobs, project, results
from relion_zo.config import SiteConfig
from relion_zo.errors import ForeignJobError, InputError, NotFoundError, RelionZoError
from relion_zo.manager import JobManager, Outcome
from relion_zo.movies import MovieChecker
from relion_zo.paths import open_append
from relion_zo.relion_it import batches as bt
from relion_zo.relion_it import options as options_mod
from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.calculate import with_calculated
from relion_zo.relion_it.driver import (
    DriverResult,
    DriverSettings,
    Progress,
    SchedulerRunning,
    process_start,
    refuse_if_scheduled,
    run_driver,
    write_error_reason,
)
from relion_zo.relion_it.stages import (
    BatchPlan,
    check_capabilities,
    classifies,
    picks,
    second_pass,
    stages,
    uses_cryolo,
    with_queue,
)

log = logging.getLogger(__name__)

RUN_LOG = "relion_zo_run.log"


STOP_CHECK_SECONDS = 1.0  # how often a running wrapper asks ISPyB whether to stop


class StopRequest(threading.Event):
    """A stop flag with why it was set and what kind of end it is (an ``Outcome`` kind:
    "stopped" for a user's stop, "shutdown" for a service manager's SIGTERM, "closed" when the
    job was closed elsewhere and nothing more is to be written)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.kind = "stopped"

    def request(self, reason: str, *, kind: str = "stopped") -> None:
        if not self.is_set():
            self.reason, self.kind = reason, kind
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
    """Where this process runs, as ``processingEnvironment`` records it: its host, pid and
    start time (``control.wrapper_alive`` tells it from a later process with the same pid)."""
    pid = os.getpid()
    return (f"host={socket.gethostname()} pid={pid} started={process_start(pid)} "
            f"relion_zo={__version__}")



def prepare_project(
    spec: jobs.JobSpec, config: SiteConfig, note, *, resume: bool = False
) -> tuple[Path, DriverSettings]:
    """Everything that touches disk before RELION starts; raises RelionZoError on bad input.
    ``resume``: carry on in this job's own existing project (refused for any other folder)."""
    params = with_calculated(spec.parameters)  # relion_it's "calculate for me" sizes
    check_capabilities(params, config)
    params = with_queue(params, config)  # the site's queue, where a job sends RELION's jobs
    jobs.check_movies_folder(config, spec.visit_directory, spec.image_directory)
    jobs.check_template(spec.file_template)  # the row may come from another tool
    jobs.check_parameters_on_disk(params, spec.visit_directory)
    folder = project.project_directory(config, spec.visit_directory, spec.processing_job_id)
    glob = project.movies_glob(params.import_images, spec.image_directory, spec.file_template)
    project.create_project(folder, [spec.visit_directory, *config.data_roots],
                           spec.processing_job_id, resume=resume)
    note(f"project {folder}")
    if uses_cryolo(params, config):
        note(f"autopick_do_cryolo: picking with crYOLO ({config.executables.cryolo}) in "
             "RELION's External job")
    elif params.autopick_do_cryolo and picks(params):  # PATo's form ticks crYOLO
        note("autopick_do_cryolo: no crYOLO is configured at this site; picking with LoG")
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
    try:  # before the options file: a scientist's relion_it.py may be reading it
        refuse_if_scheduled(folder)
    except SchedulerRunning as exc:
        raise InputError(str(exc)) from None
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
        stall_seconds=config.stall_seconds,
        batches=BatchPlan(params) if classifies(params) else None,
        second_pass=second_pass(params),
        queue=config.queue,
    )
    return folder, settings


class _Watch:
    """The running wrapper's link to ISPyB: beats every ``heartbeat_seconds``, checks every
    ``STOP_CHECK_SECONDS`` for a stop request or a job closed elsewhere. One attempt each
    (``beats`` retries nothing): during a database outage beats are skipped and RELION runs on."""

    def __init__(self, beats: JobManager, program: int, stop: StopRequest,
                 heartbeat_seconds: float, on_progress, note):
        self.beats, self.program, self.stop = beats, program, stop
        self.heartbeat_seconds = heartbeat_seconds
        self.on_progress = on_progress
        self.note = note
        self.last_beat = self.last_check = time.monotonic()
        self.failing = False

    def on_tick(self, progress: Progress) -> None:
        if self.on_progress:
            self.on_progress(progress)
        if time.monotonic() - self.last_beat >= self.heartbeat_seconds:
            self.last_beat = time.monotonic()
            self._act(lambda: self.beats.beat(self.program, progress.text()), "heartbeat")

    def should_stop(self) -> bool:
        if not self.stop.is_set() and time.monotonic() - self.last_check >= STOP_CHECK_SECONDS:
            self.last_check = time.monotonic()
            self._act(lambda: self.beats.check(self.program), "stop check")
        return self.stop.is_set()

    def _act(self, call, what: str) -> None:
        try:
            check = call()
        except (RelionZoError, SQLAlchemyError) as exc:
            if not self.failing:
                self.note(f"{what} failed, RELION goes on: {type(exc).__name__}")
            self.failing = True
            return
        if self.failing:
            self.note(f"{what}s work again")
            self.failing = False
        if check.final:
            self.stop.request("the job was closed while it ran", kind="closed")
        elif check.stop_request:
            self.stop.request(check.stop_request)


PICKER_NAMES = ("autopick_job", "autopick2_job")
CLASSIFICATIONS = re.compile(r"^(class2d|class3d|class2d_pass2|class3d2)_job_batch_(\d+)$")


class _Recorder:
    """After each pass and batch job: what RELION made that ISPyB does not hold yet, read from
    the project (``relion_zo.results``) and written by the job manager in one transaction. A
    write that fails (a database outage) is left for the next look: the rows have natural
    keys, so nothing is written twice, and RELION goes on."""

    def __init__(self, manager: JobManager, program: int, spec: jobs.JobSpec,
                 params, config: SiteConfig, project: Path, note):
        self.manager, self.program, self.note = manager, program, note
        self.spec, self.params, self.config, self.project = spec, params, config, project
        self.cache: dict[str, results.MovieResult] = {}
        self.recorded: dict[str, tuple[bool, int]] = {}  # micrograph -> (CTF, picks) written
        self.classified: dict[str, int] = {}  # RELION job -> its model file's mtime written
        self.model_linked: tuple[str, ...] = ()
        self.failing = False

    def pickers(self) -> dict[str, str]:
        p, config = self.params, self.config
        first = (f"crYOLO {Path(config.cryolo_weights or '').name}"
                 if uses_cryolo(p, config) else "LoG")
        names = {"autopick_job": first}
        try:
            reference = bt.read_reference(self.project)
        except ValueError:
            reference = None
        if reference is not None:
            names["autopick2_job"] = f"3D reference {reference.map}"
        return names

    def pictures(self, movie: results.MovieResult) -> results.MovieFiles:
        """The drift plot, the micrograph's snapshot and the CTF fit's picture, beside
        RELION's files; each made once (a picture that cannot be made is left out)."""
        micrograph = Path(movie.micrograph)
        wanted = {
            "drift_plot": (micrograph.with_name(micrograph.stem + "_drift_plot.json"),
                           lambda out: results.drift_plot(out, movie.drift), bool(movie.drift)),
            "snapshot": (micrograph.with_name(micrograph.stem + "_snapshot.png"),
                         lambda out: images.snapshot(micrograph, out), True),
        }
        if movie.ctf is not None:
            diagnostic = Path(movie.ctf.image)
            wanted["ctf_image"] = (diagnostic.with_name(diagnostic.stem + "_ctf.png"),
                                   lambda out: images.ctf_image(diagnostic, out), True)
        made: dict = {}
        for name, (out, make, possible) in wanted.items():
            if not possible:
                continue
            try:
                made[name] = str(out if out.exists() else make(out))
            except (OSError, ValueError, RelionZoError) as exc:
                log.warning("no %s for %s: %s", name, micrograph.name, exc)
        pictures = []
        relative = micrograph.relative_to(self.project)
        diameter = self.params.autopick_LoG_diam_max / (
            self.params.angpix * self.params.motioncor_binning)
        for pick in movie.picks:  # each picking job's picks on the snapshot
            out = (self.project / pick.job / Path(*relative.parts[2:])).with_name(
                micrograph.stem + "_picks.png")
            try:
                if not out.exists():
                    images.picks(micrograph, results.coordinates(
                        self.project, pick.job, str(relative)), diameter, out)
                pictures.append((pick.job, str(out)))
            except (OSError, ValueError, RelionZoError) as exc:
                log.warning("no picture of %s's picks in %s: %s", pick.job, micrograph.name,
                            exc)
        return results.MovieFiles(**made, picks=tuple(pictures))

    def class_picture(self, image: str) -> str:
        """A 2D class average (``n@stack``) as a PNG beside its stack, which the web UIs can
        show; the ``n@stack`` name itself where the picture cannot be made."""
        index, _, stack = image.partition("@")
        if not stack or not index.isdigit():
            return image
        out = Path(stack).with_name(f"{Path(stack).stem}_{int(index)}.png")
        try:
            return str(images.class_average(Path(stack), int(index), out))
        except (OSError, ValueError, IndexError, RelionZoError) as exc:
            log.warning("no picture of class %s: %s", image, exc)
            return image

    def look(self, project_jobs: dict[str, str]) -> tuple[results.JobResults, list]:
        p, project = self.params, self.project
        new_movies = []
        for movie in results.movies(project, project_jobs, self.pickers(), self.cache):
            key = movie.micrograph
            state = (movie.ctf is not None, len(movie.picks))
            if self.recorded.get(key) == state:
                continue
            new_movies.append((movie, self.pictures(movie)))
        classified = []
        for name, job in project_jobs.items():
            match = CLASSIFICATIONS.match(name)
            if not match or pl.exit_state(project, job) != "success":
                continue
            stamp = (project / job / pl.EXIT_SUCCESS).stat().st_mtime_ns
            if self.classified.get(job) == stamp:
                continue
            kind = "2D" if match.group(1).startswith("class2d") else "3D"
            found = results.classification(project, job, kind, int(match.group(2)),
                                           p.symmetry if kind == "3D" else "C1")
            if found is not None and kind == "2D":
                found = replace(found, classes=tuple(
                    replace(c, image=self.class_picture(c.image)) for c in found.classes))
            if found is not None:
                count = (p.class2d_nr_classes if kind == "2D" else p.class3d_nr_classes)
                classified.append((found, count, stamp))
        model = None
        class3d = tuple(sorted(job for name, job in project_jobs.items()
                               if name.startswith("class3d_job_batch_")))
        inimodel = project_jobs.get("inimodel")
        if (inimodel and class3d and class3d != self.model_linked
                and pl.exit_state(project, inimodel) == "success"):
            star = bt.output_model_star(project, inimodel)
            best = bt.best_class(project, star) if star else None
            if best is not None:
                found = results.classification(project, inimodel, "3D", 1, p.symmetry)
                particles = round(best.distribution * found.particles) if found else 0
                model = results.InitialModelResult(best.resolution, particles, class3d)
        return results.JobResults(
            dcid=self.spec.data_collection_id, project=str(project),
            patches=(p.motioncor_patches_x, p.motioncor_patches_y),
            search={"box": p.ctffind_boxsize, "minres": p.ctffind_minres,
                    "maxres": p.ctffind_maxres, "defocus_min": p.ctffind_defocus_min,
                    "defocus_max": p.ctffind_defocus_max,
                    "defocus_step": p.ctffind_defocus_step,
                    "amplitude_contrast": p.ampl_contrast,
                    "particle_diameter": p.autopick_LoG_diam_max},
            movies=tuple(new_movies),
            classifications=tuple((c, n) for c, n, _ in classified),
            initial_model=model), classified

    def __call__(self, project_jobs: dict[str, str]) -> None:
        try:
            found, classified = self.look(project_jobs)
            if found.empty():
                return
            added = self.manager.record_results(self.program, found)
        except (RelionZoError, SQLAlchemyError, OSError) as exc:
            if not self.failing:
                self.note(f"results not recorded yet, RELION goes on: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}")
            self.failing = True
            return
        self.failing = False
        for movie, _ in found.movies:
            self.recorded[movie.micrograph] = (movie.ctf is not None, len(movie.picks))
        for classification, _, stamp in classified:
            self.classified[classification.job] = stamp
        if found.initial_model is not None:
            self.model_linked = found.initial_model.class3d_jobs
        written = ", ".join(f"{n} {table}" for table, n in added.items() if n)
        if written:
            self.note(f"results recorded: {written}")


def run_job(
    processing_job_id: int,
    *,
    engine: Engine,
    config: SiteConfig,
    stop: StopRequest | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    command_line: str | None = None,
    program_id: int | None = None,
    resume: bool = False,
) -> RunOutcome:
    """Run job ``processing_job_id`` to its end. Unknown ids raise ``NotFoundError``; a job of
    another pipeline raises ``ForeignJobError`` and is not touched.

    ``program_id``: a program the caller has already claimed for this job (the worker claims
    before it starts a wrapper process; ``resume`` makes a new one); without it, the run claims
    one itself. ``resume``: carry on in the job's own project, reusing RELION's finished work.
    """
    stop = stop or StopRequest()
    note = _RunLog(processing_job_id)
    manager = JobManager(engine, config)
    try:
        spec = manager.transaction(f"loading job {processing_job_id}", lambda db: jobs.load_job(
            db, config, processing_job_id))
        load_error = None
    except (NotFoundError, ForeignJobError):  # not ours to claim or to fail
        raise
    except RelionZoError as exc:  # a job that exists but whose stored rows are bad
        spec, load_error = None, exc
    program = program_id or manager.claim(
        processing_job_id,
        command_line=command_line or f"relion-zo run {processing_job_id}",
        environment=environment_text(),
    )
    if program is None:
        note("the job already has a program; not running it again")
        return RunOutcome(processing_job_id, None, "skipped", "already has a program")
    if not manager.mark_running(program, "setting up", environment_text()):
        note(f"program {program} already has a final status (stopped before it started?)")
        return RunOutcome(processing_job_id, program, "skipped", "already final")
    folder: Path | None = None
    error: BaseException | None = None
    try:
        if load_error is not None:
            raise load_error
        folder, settings = prepare_project(spec, config, note, resume=resume)
        note.open(folder / RUN_LOG)
        manager.attach(program, folder / options_mod.OPTIONS_FILE, "Input", 1)
        watch = _Watch(JobManager(engine, config, retry_seconds=0), program, stop,
                       config.heartbeat_seconds, on_progress, note)
        recorder = _Recorder(JobManager(engine, config, retry_seconds=0), program, spec,
                             with_calculated(spec.parameters), config, folder, note)
        result = run_driver(settings, should_stop=watch.should_stop, on_tick=watch.on_tick,
                            note=note, on_results=recorder,
                            record=lambda text: watch.beats.note(program, "INFO", text))
        recorder(result.jobs)  # what the last pass made, before the final status
        outcome = _outcome(result, stop, processing_job_id)
    except InputError as exc:
        outcome = Outcome("bad_input", str(exc))
    except RelionZoError as exc:
        outcome = Outcome("failed", str(exc))
    except OSError as exc:
        outcome = Outcome("failed", (folder and write_error_reason(exc, folder))
                          or _os_error(exc))
    except KeyboardInterrupt:
        outcome = Outcome("stopped", "interrupted")
    except BaseException as exc:  # a bug: recorded, then raised
        outcome, error = Outcome("crashed", f"{type(exc).__name__}: {exc}", repr(exc)), exc
    closed = stop.kind == "closed" and stop.is_set()
    if not closed and not manager.finish(program, outcome):
        closed = True
    try:  # the run log is in the project: a full disk must not keep the status unwritten
        note(f"{outcome.kind}: {outcome.text()}")
        if closed:
            note("the job already had a final status (closed elsewhere while it ran); kept it")
    except OSError as exc:
        log.warning("job %s: could not write the run log: %s", processing_job_id, exc)
    if folder is not None:
        _attach_results(manager, program, folder)
    if error is not None:
        raise error
    state = {"success": "success", "stopped": "stopped"}.get(outcome.kind, "failure")
    return RunOutcome(processing_job_id, program, state, outcome.text(), folder)


def _os_error(exc: OSError) -> str:
    """An OSError as a line that names the path (``[Errno 28]`` alone helps no one)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == 28:
        return f"no space left on the device{where}"
    return f"{exc.strerror or type(exc).__name__}{where}"


def _attach_results(manager: JobManager, program: int, folder: Path) -> None:
    for name, kind, rank in ((pl.PIPELINE_STAR, "Result", 2), (RUN_LOG, "Log", 3)):
        if (folder / name).exists():
            manager.attach(program, folder / name, kind, rank)


def _outcome(result: DriverResult, stop: StopRequest, pjid: int) -> Outcome:
    summary = result.progress.text()
    if result.outcome == "finished":
        return Outcome("success", summary)
    if result.outcome == "failed":
        return Outcome("failed", result.reason)
    if not stop.is_set():  # the file removed by hand: RELION's own way to stop relion_it
        return Outcome("stopped", f"{result.reason}; {summary}")
    if stop.kind == "shutdown":
        return Outcome("shutdown", f"{stop.reason}; {summary}; continue it with: "
                       f"relion-zo resume {pjid}")
    if stop.kind == "stopped":
        return Outcome("stopped", f"{stop.reason}; {summary}")
    return Outcome("failed", f"{stop.reason}; {summary}")


def run_job_until_signalled(processing_job_id: int, **kwargs) -> RunOutcome:
    """``run_job`` with SIGTERM (a service manager's shutdown) and SIGINT (Ctrl-C, a user's
    stop) turned into a stop: the driver ends its RELION processes, the final status says
    which, and the call returns."""
    import signal

    stop = kwargs.pop("stop", None) or StopRequest()

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM:
            stop.request(f"{name} received (service shutdown)", kind="shutdown")
        else:
            stop.request(f"{name} received")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        return run_job(processing_job_id, stop=stop, **kwargs)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
