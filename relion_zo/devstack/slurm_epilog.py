"""The local Slurm's Epilog: kill whatever is left of a job once it has ended.

``proctrack/linuxproc`` (the process tracker that needs no cgroups) finds a job's processes by
walking the tree down from the batch script. A child that outlives its parent (one that ignored
SIGTERM while the script died, or one started in the background and left behind) is reparented
to init and drops out of that tree, so Slurm would leave it running. slurmd runs this file as
the job's Epilog (as root, with ``SLURM_JOB_ID`` and ``SLURMD_NODENAME`` in its environment);
it SIGKILLs every process whose environment names the same job on the same node, as the cgroup
tracker would. The node name is per stack, so a second stack's job with the same id is left
alone.

``relion-zo stack up`` copies this file into the stack folder with the current Python as its
interpreter; it imports only the standard library and never fails the job.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def job_processes(job_id: str, node: str, proc: Path = Path("/proc")) -> list[int]:
    """The pids whose environment has ``SLURM_JOB_ID=job_id`` and ``SLURMD_NODENAME=node``."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURMD_NODENAME={node}".encode()}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            found.append(int(entry.name))
    return found


def main() -> int:
    job_id, node = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURMD_NODENAME")
    if not job_id or not node:
        return 0
    for _ in range(20):  # a process may start another while the first round kills it
        pids = job_processes(job_id, node)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print(f"epilog: job {job_id}: killed {len(pids)} leftover process(es)", file=sys.stderr)
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
