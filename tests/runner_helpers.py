"""relion_zo's services (zocalo's Dispatcher, workers) as real processes for tests."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from relion_zo import broker
from relion_zo.cli.main import main as cli
from relion_zo.devstack import stack
from relion_zo.devstack.services import LocalServices


class Services(LocalServices):
    def __init__(self, site_file: Path, stack_settings, folder: Path):
        super().__init__(site_file, stack_settings.zocalo_config_path, folder)
        self.stack_settings = stack_settings
        self.log_files: list[Path] = []

    def start(self, command, queue, timeout=60, ready_text=None):
        proc = super().start(command, queue, timeout, ready_text)
        self.log_files.append(self.procs[-1][2])
        return proc

    def alive(self) -> bool:
        return all(proc.poll() is None for _, proc, _ in self.procs)

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
        self.stop()
