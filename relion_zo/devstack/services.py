"""Run relion_zo's dispatcher (``relion-zo dispatcher``) and workers as child processes of this
one (the demo and the benchmarks; a facility runs them under its own process supervisor,
docs/operations.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from relion_zo import broker
from relion_zo.dispatcher import READY_TEXT as DISPATCHER_READY_TEXT
from relion_zo.errors import RelionZoError

READY_TEXT = "ready: up to"  # what relion_zo.worker logs once it consumes its queues


class ServiceError(RelionZoError):
    pass


class LocalServices:
    def __init__(self, site_file: Path, zocalo: Path, log_folder: Path):
        self.site_file = Path(site_file)
        self.zocalo = Path(zocalo)
        self.log_folder = Path(log_folder)
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def env(self) -> dict[str, str]:
        """The environment zocalo's commands need to find this site and broker."""
        return dict(os.environ, ZOCALO_CONFIG=str(self.zocalo),
                    RELION_ZO_CONFIG=str(self.site_file.resolve()))

    def start(
        self, command: str, queue: str, timeout: float = 60, ready_text: str | None = None
    ) -> subprocess.Popen:
        """``relion-zo COMMAND`` in a session of its own; returns once it consumes ``queue``
        (one more consumer on it, or ``ready_text`` in its log when given)."""
        self.log_folder.mkdir(parents=True, exist_ok=True)
        before = broker.consumers(self.zocalo, queue)
        log = self.log_folder / f"{command}-{len(self.procs) + 1}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [shutil.which("relion-zo") or "relion-zo", command, "--config",
                 str(self.site_file)],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((command, proc, log))
        deadline = time.monotonic() + timeout
        def ready() -> bool:
            if ready_text is not None:
                return ready_text in log.read_text(errors="replace")
            return broker.consumers(self.zocalo, queue) > before

        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"relion-zo {command} did not start; see {log}")
            time.sleep(0.1)
        return proc

    def dispatcher(self) -> subprocess.Popen:
        """relion_zo's own dispatch service (``relion_zo.dispatcher``), not zocalo's."""
        return self.start("dispatcher", broker.PROCESSING_RECIPE,
                          ready_text=DISPATCHER_READY_TEXT)

    def worker(self) -> subprocess.Popen:
        # Not the consumer count: a worker killed a moment ago may still be counted.
        return self.start("worker", broker.RUN_QUEUE, ready_text=READY_TEXT)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM each service's process group, SIGKILL what is left after ``grace``."""
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc, _ in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> LocalServices:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
