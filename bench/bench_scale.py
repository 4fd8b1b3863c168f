"""Benchmarks of issue 13's figures on the local stack: warm starts, dispatch, Stop with Slurm,
the wrapper's overhead and memory, streaming. Run by hand after `relion-zo stack up`:

  python bench/bench_scale.py start [--starts 50]      Start sent -> running, warm and cold
  python bench/bench_scale.py dispatch [--jobs 200]    jobs/s through 2 workers, no-op jobs
  python bench/bench_scale.py stop [--stops 10]        Stop -> stopped, RELION and Slurm gone
  python bench/bench_scale.py wrapper [--runs 5]       overhead beyond RELION, peak RSS
  python bench/bench_scale.py stream [--rate 1000 --minutes 30]   lag of a streaming session

Every job is a throw-away visit, deleted afterwards. Method and results: docs/performance.md.

The no-op pipeline (``dispatch``): a job whose movie folder is emptied after Start, so its
wrapper goes the whole way (claim, fork, ``running``, the project, relion_it's options, a pass
that finds nothing) and ends ``failure`` ("no movie was imported") without starting RELION.
It measures relion_zo's own path: dispatcher, broker, workers, fork server, job manager.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_broker import final_time, watch  # noqa: E402
from bench_store import PARAMS, bench_site, cleanup  # noqa: E402

from relion_zo import broker, jobs, slurm  # noqa: E402
from relion_zo.db import make_engine  # noqa: E402
from relion_zo.devstack import stack, synthetic  # noqa: E402
from relion_zo.devstack.demo import seed_visit  # noqa: E402
from relion_zo.devstack.services import LocalServices  # noqa: E402
from relion_zo.relion_it.driver import processes_in  # noqa: E402


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {values[-1] * 1000:.0f} ms (n={len(values)})")


class Visits:
    """Throw-away visits with tiny movies, and Starts for them."""

    def __init__(self, engine, site, data: Path):
        self.engine, self.site, self.data = engine, site, data
        self.sessions: list[int] = []

    def job(self, movies: int = 1, size: int = 64, frames: int = 2, *, empty: bool = False,
            **params) -> tuple[int, Path, Path]:
        """(job id, project, raw folder); ``empty``: the movies are removed after Start."""
        visit = f"zs{uuid.uuid4().int % 10**8:08d}-1"
        with Session(self.engine) as db:
            self.sessions.append(seed_visit(db, visit, start=dt.datetime(2026, 1, 1)))
        raw = self.data / "2026" / visit / "raw"
        synthetic.write_movies(raw, max(movies, 1), size=size, frames=frames)
        with Session(self.engine) as db:
            pjid = jobs.start_job(db, self.site, {**PARAMS, **params}, visit=visit,
                                  image_directory=str(raw), file_template="*.mrc"
                                  ).processing_job_id
        for movie in raw.glob("*.mrc"):
            if empty:
                movie.unlink()
            else:  # settled, as a session's movies are: no wait for a copy still running
                os.utime(movie, (time.time() - 10, time.time() - 10))
        return pjid, raw.parent / "processed" / f"relion_{pjid}", raw

    def remove(self) -> None:
        for session_id in self.sessions:
            cleanup(self.engine, session_id)


def write_site(site, path: Path) -> Path:
    path.write_text(yaml.safe_dump(site.model_dump(mode="json")))
    return path


def bench_start(args, engine, settings, data, tmp) -> None:
    """Start message sent -> running, one job at a time, a warm worker and a cold one."""
    zocalo = settings.zocalo_config_path
    for warm in (True, False):
        site = bench_site(data, settings, idle_seconds=0, zocalo_config=zocalo,
                          warm_wrappers=warm)
        site_file = write_site(site, tmp / f"site-{warm}.yaml")
        visits = Visits(engine, site, data)
        try:
            with LocalServices(site_file, zocalo, tmp / f"logs-{warm}") as services:
                services.dispatcher()
                services.worker()
                running, queued, final = [], [], []
                for _ in range(args.starts):
                    pjid, _, _ = visits.job(empty=True)
                    sent = time.monotonic()
                    broker.send(zocalo, [broker.start_message(pjid)])
                    seen = watch(engine, site, [pjid])[pjid]
                    # a no-op job may pass a state between two polls (20 ms apart)
                    running.append(seen.get("running", final_time(seen)) - sent)
                    queued.append(seen.get("queued", seen.get("running", final_time(seen)))
                                  - sent)
                    final.append(final_time(seen) - sent)
            kind = "warm (fork server)" if warm else "cold (fresh interpreter)"
            print(f"{kind}: sent -> queued {percentiles(queued)}")
            print(f"{kind}: sent -> running {percentiles(running)}")
            print(f"{kind}: sent -> final (no-op job) {percentiles(final)}", flush=True)
            if not args.cold:
                break
        finally:
            visits.remove()


def bench_dispatch(args, engine, settings, data, tmp) -> None:
    """N no-op jobs sent at once through 2 workers (``worker_jobs`` each): jobs a second."""
    zocalo = settings.zocalo_config_path
    site = bench_site(data, settings, idle_seconds=0, zocalo_config=zocalo,
                      worker_jobs=args.worker_jobs, heartbeat_seconds=5)
    site_file = write_site(site, tmp / "site-dispatch.yaml")
    visits = Visits(engine, site, data)
    try:
        pjids = [visits.job(empty=True)[0] for _ in range(args.jobs)]
        with LocalServices(site_file, zocalo, tmp / "logs-dispatch") as services:
            services.dispatcher()
            services.worker()
            services.worker()
            time.sleep(5)  # both fork servers ready
            sent = time.monotonic()
            busy_before = _cpu_busy()
            broker.send(zocalo, [broker.start_message(p) for p in pjids])
            seen = watch(engine, site, pjids, limit=1800)
            busy = [after - before for after, before in zip(_cpu_busy(), busy_before)]
        ends = sorted(final_time(s) - sent for s in seen.values())
        runs = sorted(s.get("running", final_time(s)) - sent for s in seen.values())
        claims = sorted(s.get("queued", s.get("running", final_time(s))) - sent
                        for s in seen.values())
        print(f"claimed by a worker: half after {claims[len(claims) // 2]:.1f} s, all after "
              f"{claims[-1]:.1f} s")
        wall = ends[-1]
        print(f"{args.jobs} no-op jobs, 2 workers x {args.worker_jobs}: all final after "
              f"{wall:.1f} s = {args.jobs / wall:.1f} jobs/s; half final after "
              f"{ends[len(ends) // 2]:.1f} s; all running after {runs[-1]:.1f} s")
        states = {}
        for s in seen.values():
            final = [k for k in s if k in ("success", "failure", "stopped", "lost")]
            states[final[0] if final else "?"] = states.get(final[0] if final else "?", 0) + 1
        print(f"final states: {states}; the machine's CPUs were busy "
              f"{100 * busy[0] / max(busy[1], 1e-9):.0f} % of the time "
              f"({busy[0] / args.jobs * 1000:.0f} ms of CPU a job, every process included)",
              flush=True)
    finally:
        visits.remove()


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [float(v) for v in open("/proc/stat").readline().split()[1:]]
    tick = 100.0  # USER_HZ
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / tick, sum(fields) / tick


def bench_stop(args, engine, settings, data, tmp) -> None:
    """Stop sent while MotionCorr runs (locally, then in Slurm) -> stopped, nothing left."""
    zocalo = settings.zocalo_config_path
    queue = {"submit_command": "sbatch", "names": [stack.SLURM_PARTITION],
             "slurm_conf": str(settings.slurm_conf_path)}
    for where in ("local", "slurm"):
        site = bench_site(data, settings, idle_seconds=3600, zocalo_config=zocalo,
                          queue=queue if where == "slurm" else None)
        site_file = write_site(site, tmp / f"site-stop-{where}.yaml")
        visits = Visits(engine, site, data)
        stops = []
        try:
            with LocalServices(site_file, zocalo, tmp / f"logs-stop-{where}") as services:
                services.dispatcher()
                services.worker()
                for _ in range(args.stops):
                    extra = {"motioncor_submit_to_queue": "true"} if where == "slurm" else {}
                    pjid, project, _ = visits.job(movies=12, size=512, frames=8, **extra)
                    broker.send(zocalo, [broker.start_message(pjid)])
                    while not processes_in(project, "relion_run_mot"):
                        time.sleep(0.005)
                    sent = time.monotonic()
                    broker.send(zocalo, [broker.recipe_message("relion-stop", pjid)])
                    seen = watch(engine, site, [pjid])[pjid]
                    assert "stopped" in seen, seen
                    while processes_in(project) or (where == "slurm" and any(
                            j.active for j in slurm.project_jobs(project, site.queue))):
                        time.sleep(0.01)
                    gone = time.monotonic()
                    stops.append((seen["stopped"] - sent, gone - sent))
            print(f"{where}: stop sent -> stopped {percentiles([s[0] for s in stops])}")
            print(f"{where}: stop sent -> RELION{' and Slurm' if where == 'slurm' else ''} "
                  f"gone {percentiles([s[1] for s in stops])}", flush=True)
        finally:
            visits.remove()


def bench_wrapper(args, engine, settings, data, tmp) -> None:
    """A run's wall time against RELION's own commands, and the wrapper's peak RSS, for a job
    forked warm (what a worker does) and for ``relion-zo run`` (a fresh interpreter)."""
    from relion_zo.warm import ForkServer

    site = bench_site(data, settings, idle_seconds=0)
    site_file = write_site(site, tmp / "site-wrapper.yaml")
    visits = Visits(engine, site, data)
    from relion_zo.manager import JobManager
    from relion_zo.runner import environment_text

    manager = JobManager(make_engine(settings.processing_credentials_path), site)
    env = {**os.environ, "RELION_ZO_CONFIG": str(site_file)}
    server = ForkServer(env=env)
    server.start()
    rows = []
    try:
        for _ in range(args.runs):
            pjid, project, _ = visits.job(movies=4, size=512, frames=8)
            program = manager.claim(pjid, command_line="bench", environment=environment_text())
            started = time.monotonic()
            wrapper = server.spawn(pjid, program)
            peak = pss = 0
            while wrapper.poll() is None:
                peak = max(peak, _hwm(wrapper.pid))
                pss = max(pss, _pss(wrapper.pid))
                time.sleep(0.05)
            wall = time.monotonic() - started
            relion = _relion_seconds(project)
            rows.append((wall, relion, peak, pss))
            print(f"wall {wall:.2f} s, RELION {relion:.2f} s, overhead {wall - relion:.2f} s, "
                  f"peak RSS {peak / 1024:.0f} MB (its own share, PSS: {pss / 1024:.0f} MB)",
                  flush=True)
    finally:
        server.close()
        visits.remove()
    for i, label in ((0, "wall"), (1, "RELION's commands")):
        print(f"{label}: median {statistics.median(r[i] for r in rows):.2f} s")
    print(f"overhead: median {statistics.median(r[0] - r[1] for r in rows):.2f} s; peak RSS "
          f"median {statistics.median(r[2] for r in rows) / 1024:.0f} MB, PSS "
          f"{statistics.median(r[3] for r in rows) / 1024:.0f} MB")


def _hwm(pid: int) -> int:
    """VmHWM (kB) of a process: its peak resident set so far."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss(pid: int) -> int:
    """Pss (kB): the process's proportional share of its resident pages (pages it shares with
    its fork server count by half)."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _relion_seconds(project: Path) -> float:
    """The driver's own account of RELION's wall time, from its final line in the run log."""
    for line in reversed((project / "relion_zo_run.log").read_text().splitlines()):
        if "RELION's commands took" in line:
            return float(line.split("RELION's commands took", 1)[1].split()[0])
    raise RuntimeError(f"no RELION time in {project}/relion_zo_run.log")


def bench_stream(args, engine, settings, data, tmp) -> None:
    """Movies written at ``rate`` an hour for ``minutes`` into a running job's folder; each
    movie's lag from written to motion-corrected (its MotionCorr output), and the job's
    reported lag."""
    zocalo = settings.zocalo_config_path
    site = bench_site(data, settings, idle_seconds=120, zocalo_config=zocalo)
    site_file = write_site(site, tmp / "site-stream.yaml")
    visits = Visits(engine, site, data)
    pjid, project, raw = visits.job(movies=1, size=256, frames=8,
                                    preprocess_repeat_wait="0.1")
    written: dict[str, float] = {"movie_0001": time.monotonic()}
    stop = threading.Event()
    gap = 3600.0 / args.rate
    count = int(args.rate * args.minutes / 60)

    def writer():
        for i in range(2, count + 1):
            if stop.wait(gap):
                return
            synthetic.write_movies(raw, 1, start=i, size=256, frames=8)
            written[f"movie_{i:04d}"] = time.monotonic()

    try:
        with LocalServices(site_file, zocalo, tmp / "logs-stream") as services:
            services.dispatcher()
            services.worker()
            broker.send(zocalo, [broker.start_message(pjid)])
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            done: dict[str, float] = {}
            while thread.is_alive() or len(done) < len(written):
                for path in project.glob("MotionCorr/job*/Movies/*.mrc"):
                    done.setdefault(path.stem, time.monotonic())
                time.sleep(0.5)
                if not thread.is_alive() and time.monotonic() - max(written.values()) > 600:
                    break
            stop.set()
            subprocess.run(["relion-zo", "status", "--config", str(site_file), "--job",
                            str(pjid)], check=False)
            broker.send(zocalo, [broker.recipe_message("relion-stop", pjid)])
            watch(engine, site, [pjid])
        lags = [done[name] - when for name, when in written.items() if name in done]
        print(f"{len(written)} movies at {args.rate}/h for {args.minutes} min; "
              f"{len(lags)} motion-corrected; lag written -> corrected "
              f"{percentiles(lags)}; {len(written) - len(lags)} never corrected")
    finally:
        visits.remove()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    start = sub.add_parser("start")
    start.add_argument("--starts", type=int, default=50)
    start.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                       help="also a worker without its fork server (warm_wrappers: false)")
    dispatch = sub.add_parser("dispatch")
    dispatch.add_argument("--jobs", type=int, default=200)
    dispatch.add_argument("--worker-jobs", type=int, default=8)
    sub.add_parser("stop").add_argument("--stops", type=int, default=10)
    sub.add_parser("wrapper").add_argument("--runs", type=int, default=5)
    stream = sub.add_parser("stream")
    stream.add_argument("--rate", type=float, default=1000)
    stream.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    settings = stack.StackSettings.from_env()
    stack.up(settings)
    engine = make_engine(settings.credentials_path)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = tmp / "data"
        {"start": bench_start, "dispatch": bench_dispatch, "stop": bench_stop,
         "wrapper": bench_wrapper, "stream": bench_stream}[args.what](
            args, engine, settings, data, tmp)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
