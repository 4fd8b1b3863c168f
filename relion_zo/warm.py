"""Warm wrappers: a fork server that has imported a run's code once, so a worker's new job is
``running`` within a fraction of a second instead of after a fresh interpreter's imports.

The worker starts ``python -m relion_zo.warm`` once (``ForkServer``). That process imports
everything a run needs (``PRELOAD``: the ISPyB ORM, SQLAlchemy's MySQL dialect, numpy, the
runner, the driver, the result readers), opens no connection and starts no thread of its own,
and then waits on its stdin for one line per job: ``PJID PROGRAM``. For each it forks a
wrapper (``relion_zo.child.main``) in a session of its own, as ``spawn_wrapper`` starts one
from a fresh interpreter, and answers ``started PID``. When a wrapper ends, the server reaps it
and writes ``ended PID STATUS`` (a negative status is the signal that ended it).

Still one process per job: a wrapper that crashes takes no other job with it. The wrappers
outlive the server and the worker: when the worker goes, the server reads the end of its stdin
and exits, and its wrappers carry on (adopted by init), beating and writing their own final
status as before; the next worker finds them by their heartbeats.
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import IO

log = logging.getLogger(__name__)

# What a run imports on its way to ``running`` and beyond, in the order a run imports it.
PRELOAD = (
    "sqlalchemy",
    "sqlalchemy.dialects.mysql.mysqldb",
    "MySQLdb",
    "ispyb.sqlalchemy",
    "numpy",
    "starfile",
    "mrcfile",
    "relion_zo.config",
    "relion_zo.db",
    "relion_zo.manager",
    "relion_zo.runner",
    "relion_zo.relion_it.driver",
    "relion_zo.results",
    "relion_zo.result_rows",
    "relion_zo.images",
    "relion_zo.child",
)
START_TIMEOUT = 60.0  # the server's imports, on a loaded machine
ANSWER_TIMEOUT = 10.0  # a fork


class ForkServerError(RuntimeError):
    """The fork server is not there or did not answer."""


# ---------------------------------------------------------------------------- the server


def _preload(modules=PRELOAD) -> list[str]:
    """Import ``modules`` and configure the ORM's mappers (which SQLAlchemy otherwise does at
    a run's first query, for ISPyB's 200-odd classes); returns what failed (a run does it
    itself)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing extra: the wrapper imports it or fails
            failed.append(name)
    try:
        from sqlalchemy.orm import configure_mappers

        configure_mappers()
    except Exception:  # noqa: BLE001 - the run configures them at its first query
        failed.append("configure_mappers")
    return failed


def _wrapper(pjid: int, program: int) -> int:
    """In the forked child: a session of its own, the default signal handlers, then the run."""
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.closerange(3, 1 << 16)  # the server's pipes: its worker must see them close with it
    from relion_zo import child

    return child.main([str(pjid), str(program)])


def _exit_status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve(requests: IO[str], answers: IO[str]) -> int:
    """The server's loop: fork a wrapper per request line, report each one's end."""
    failed = _preload()
    answers.write(f"ready {os.getpid()} {','.join(failed) or '-'}\n")
    answers.flush()
    # A wrapper's end wakes the loop through a pipe (select would resume after a handler).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    fd = requests.fileno()
    buffer = b""
    while True:
        _reap(answers)
        readable, _, _ = select.select([fd, wake_r], [], [], 5.0)
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        if fd not in readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            _reap(answers)
            return 0  # the worker is gone; the wrappers live on
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            answers.write(_fork(line.decode("ascii", "replace")) + "\n")
            answers.flush()


def _fork(line: str) -> str:
    try:
        pjid, program = (int(word) for word in line.split())
    except ValueError:
        return f"refused {line[:80]!r} is not 'PJID PROGRAM'"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _wrapper(pjid, program)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the child must never return into the server
            logging.getLogger("relion_zo.child").exception("job %s: the wrapper failed", pjid)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return f"started {pid}"


def _reap(answers: IO[str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        answers.write(f"ended {pid} {_exit_status(status)}\n")
        answers.flush()


def main() -> int:
    # The answers go to the worker through the real stdout; a wrapper's own output (its log
    # lines) goes to stderr, the worker's log, like a wrapper started from a fresh interpreter.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return serve(sys.stdin, answers)


# ---------------------------------------------------------------------------- the worker's side


class ForkServer:
    """The worker's handle on its fork server: ``spawn(pjid, program)`` is a drop-in for
    ``worker.spawn_wrapper``. Started on first use, and again if it has gone."""

    def __init__(self, env: dict[str, str] | None = None, python: str = sys.executable):
        self.env = env
        self.python = python
        self.process: subprocess.Popen | None = None
        self.ended: dict[int, int] = {}
        self.failed_imports: list[str] = []
        self._buffer = b""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.python, "-m", "relion_zo.warm"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=self.env, start_new_session=True)
        self._buffer = b""
        words = self._answer(START_TIMEOUT, "ready")
        self.failed_imports = [] if words[2] == "-" else words[2].split(",")
        if self.failed_imports:
            log.warning("fork server %s could not preload %s", words[1],
                        ", ".join(self.failed_imports))
        log.info("fork server %s ready: wrappers start warm", words[1])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, pjid: int, program: int) -> WarmWrapper:
        if not self.alive():
            self.start()
        try:
            self.process.stdin.write(f"{int(pjid)} {int(program)}\n".encode())
            self.process.stdin.flush()
        except OSError as exc:
            raise ForkServerError(f"the fork server is gone ({exc})") from None
        words = self._answer(ANSWER_TIMEOUT, "started")
        return WarmWrapper(int(words[1]), self, self.process)

    def collect(self) -> None:
        """Read the ends the server has reported, without waiting."""
        if self.process is None:
            return
        self._read(0.0, None)

    def close(self) -> None:
        """Stop the server (its wrappers carry on)."""
        if self.process is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _answer(self, timeout: float, expected: str) -> list[str]:
        words = self._read(timeout, expected)
        if words is None:
            self._kill()
            raise ForkServerError(f"the fork server did not answer '{expected}' within "
                                  f"{timeout:g} s")
        if words[0] != expected:
            raise ForkServerError(f"the fork server answered: {' '.join(words)}")
        return words

    def _read(self, timeout: float, expected: str | None) -> list[str] | None:
        """Lines from the server until one that is not an ``ended`` report (returned), or
        until ``timeout``; ``ended`` reports are kept in ``self.ended``."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                words = line.decode("ascii", "replace").split()
                if words and words[0] == "ended" and len(words) == 3:
                    self.ended[int(words[1])] = int(words[2])
                elif words:
                    return words
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(left, 0.0))
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class WarmWrapper:
    """A wrapper forked by the server: ``poll()`` as ``subprocess.Popen.poll`` (its exit
    status, or None while it runs), from the server's report; if the server itself has gone,
    from ``/proc`` (status unknown: ``end_text`` says so)."""

    def __init__(self, pid: int, server: ForkServer, parent: subprocess.Popen):
        self.pid = pid
        self.server = server
        self.parent = parent  # the server process that forked it (reports its end)
        self.end_text: str | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._poll()
        return self.returncode

    def _poll(self) -> int | None:
        if self.server.process is self.parent:
            self.server.collect()
        if self.pid in self.server.ended:
            return self.server.ended.pop(self.pid)
        if self.parent.poll() is None or _running(self.pid):
            return None
        self.end_text = "its exit status is unknown: its fork server had gone"
        return 1


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
