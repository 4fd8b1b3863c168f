"""The local stack's one-node Slurm, used as a client uses it: ``sbatch``, ``squeue``, ``scancel``
and ``scontrol`` with only ``slurm_environment`` added to their environment.

Real Slurm, never skipped: when it cannot start, ``stack_settings`` errors and so does every test.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

from relion_zo.devstack import stack

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def client(settings, *args: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(stack.slurm_environment(settings))
    result = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def submit(settings, script: str, folder: Path, *options: str) -> str:
    path = folder / "job.sh"
    path.write_text("#!/bin/bash\n" + script)
    return client(settings, "sbatch", "--parsable", f"--output={folder / 'job.out'}", *options,
                  str(path), cwd=folder).strip().split(";")[0]


def job(settings, job_id: str) -> dict[str, str]:
    text = client(settings, "scontrol", "show", "job", "--oneliner", job_id)
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(settings, job_id: str, states: set[str], timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := job(settings, job_id))["JobState"] not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {info['JobState']}"
        time.sleep(0.1)
    return info


def pids_of(token: str) -> list[int]:
    """Processes (zombies aside) whose command line holds ``token``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if token in cmd and state != "Z" and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def test_the_node_is_this_machine_on_loopback(stack_settings):
    info = stack.status(stack_settings)
    assert all(info[name]["running"] for name in stack.SLURM_DAEMONS)
    node = client(stack_settings, "scontrol", "show", "node", "--oneliner",
                  stack_settings.slurm_node)
    assert f"CPUTot={os.cpu_count()} " in node
    assert re.search(r"State=(IDLE|MIXED|ALLOCATED)\b", node)
    config = client(stack_settings, "scontrol", "show", "config")
    assert re.search(r"MinJobAge\s*=\s*300 sec", config)
    assert re.search(r"ProctrackType\s*=\s*proctrack/linuxproc", config)
    partitions = client(stack_settings, "sinfo", "--noheader", "--format=%P")
    assert partitions.split() == [stack.SLURM_PARTITION + "*"]
    # Both daemons listen on 127.0.0.1 only (/proc/net/tcp*: state 0A is LISTEN).
    listening = {line.split()[1] for table in ("tcp", "tcp6")
                 for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"}
    for port in (stack_settings.slurmctld_port, stack_settings.slurmd_port):
        assert {a for a in listening if a.endswith(f":{port:04X}")} == {f"0100007F:{port:04X}"}


def test_a_job_completes_with_its_output(stack_settings, tmp_path):
    job_id = submit(stack_settings, "echo hello from $SLURM_JOB_ID\n", tmp_path)
    info = wait_for(stack_settings, job_id, FINAL_STATES)
    assert info["JobState"] == "COMPLETED"
    assert info["ExitCode"] == "0:0"
    assert (tmp_path / "job.out").read_text() == f"hello from {job_id}\n"
    # Still there for a client that looks late (MinJobAge), in squeue -t all too.
    listed = client(stack_settings, "squeue", "--noheader", "--states=all", "--format=%i %T")
    assert f"{job_id} COMPLETED" in listed.splitlines()


def test_a_job_that_exits_non_zero_failed(stack_settings, tmp_path):
    job_id = submit(stack_settings, "echo failing; exit 3\n", tmp_path)
    info = wait_for(stack_settings, job_id, FINAL_STATES)
    assert info["JobState"] == "FAILED"
    assert info["ExitCode"] == "3:0"


def test_scancel_ends_every_process_of_the_job(stack_settings, tmp_path):
    """A script with a child, a grandchild, a child that ignores SIGTERM and mpirun with two
    ranks: after scancel the job is CANCELLED and none of them survives."""
    token = str(700000 + secrets.randbelow(99999))  # sleep's argument: seconds, and our marker
    script = (f"sleep {token} &\n"
              f"bash -c 'sleep {token}; true' &\n"
              f"bash -c 'trap \"\" TERM; sleep {token}; true' &\n"
              f"mpirun --allow-run-as-root --oversubscribe -np 2 sleep {token} &\n"
              "wait\n")
    job_id = submit(stack_settings, script, tmp_path)
    wait_for(stack_settings, job_id, {"RUNNING"})
    # sleep, bash and sleep, bash and sleep, mpirun and its two sleeps
    expected = 8
    deadline = time.monotonic() + 20
    while len(pids_of(token)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids_of(token)) == expected, (tmp_path / "job.out").read_text()

    client(stack_settings, "scancel", job_id)
    info = wait_for(stack_settings, job_id, FINAL_STATES)
    assert info["JobState"] == "CANCELLED"
    deadline = time.monotonic() + stack.SLURM_KILL_WAIT + 10
    while pids_of(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_of(token) == []
