"""Starting relion_zo's services (zocalo's Dispatcher, workers) as real processes for tests."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from relion_zo import broker, stack
from relion_zo.cli.main import main as cli


class Services:
    def __init__(self, site_file: Path, stack_settings, folder: Path):
        self.site_file = site_file
        self.stack_settings = stack_settings
        self.zocalo = stack_settings.zocalo_config_path
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.log_files: list[Path] = []

    def env(self) -> dict:
        return dict(os.environ, ZOCALO_CONFIG=str(self.zocalo),
                    RELION_ZO_CONFIG=str(self.site_file))

    def _start(self, command: str, queue: str, extra=()) -> subprocess.Popen:
        before = broker.consumers(self.zocalo, queue)
        log = self.folder / f"{command}-{len(self.procs)}.log"
        self.log_files.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [shutil.which("relion-zo"), command, "--config", str(self.site_file), *extra],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while broker.consumers(self.zocalo, queue) <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command} did not start consuming {queue}:\n"
                                     + log.read_text()[-3000:])
            time.sleep(0.1)
        return proc

    def dispatcher(self) -> subprocess.Popen:
        return self._start("dispatcher", broker.PROCESSING_RECIPE)

    def worker(self, jobs: int | None = None) -> subprocess.Popen:
        if jobs:
            text = self.site_file.read_text() + f"\nworker_jobs: {jobs}\n"
            self.site_file = self.site_file.with_name(f"site-{jobs}-jobs.yaml")
            self.site_file.write_text(text)
        return self._start("worker", broker.RUN_QUEUE)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def idle(self) -> bool:
        """Nothing waiting or unacknowledged in the request, run and stop queues."""
        counts = stack.queue_counts(self.stack_settings)
        return all(counts.get(q, (0, 0)) == (0, 0) for q in broker.QUEUES)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())

    def run_cli(self, args: list[str]) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli(args)
        return code, out.getvalue()

    def capture(self, args: list[str]) -> str:
        code, out = self.run_cli(args)
        assert code == 0, out
        return out

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
