"""Talking to ``relion_pipeliner`` and reading RELION's files in a project directory.

Every call is an argument list with ``cwd=`` the project; nothing goes through a shell.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from relion_zo.paths import open_append, open_new, replace_with

PIPELINE_STAR = "default_pipeline.star"
SUBMITTED_JOBS = "RELION_IT_SUBMITTED_JOBS"
RUNNING_RELION_IT = "RUNNING_RELION_IT"
RUNNING_PIPELINER = "RUNNING_PIPELINER_"
GUI_PROJECT_MARK = ".gui_projectdir"  # RELION's GUI opens a folder holding it as a project
LOCK_DIR = ".relion_lock"
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
# Never in a value RELION's own options take; a last guard before anything reaches its shell.
FORBIDDEN_IN_VALUES = frozenset(';\n\r$`"\'\\|&<>')
EMPTY_PIPELINE = "data_pipeline_general\n\n_rlnPipeLineJobCounter                       1\n"


class PipelinerError(RuntimeError):
    """relion_pipeliner refused or failed; the message carries its last error line."""


def ensure_pipeline(project: Path) -> None:
    """A project needs a pipeline file before ``--addJob`` can read it (as relion_it does),
    and RELION's GUI asks whether to start a new project in a folder without
    ``.gui_projectdir``."""
    star = project / PIPELINE_STAR
    if not star.exists():
        with open_new(star, "pipeline file") as handle:
            handle.write(EMPTY_PIPELINE)
    mark = project / GUI_PROJECT_MARK
    if not mark.exists():
        open_new(mark, "RELION GUI project mark").close()


def clear_stale_lock(project: Path) -> bool:
    """Remove ``.relion_lock`` left by a pipeliner that died; the next one would wait 2 min."""
    lock = project / LOCK_DIR
    if lock.exists():
        shutil.rmtree(lock, ignore_errors=True)
        return True
    return False


def job_options(options: Sequence[tuple[str, object]]) -> str:
    """``--addJobOptions`` text: ``label == value;`` for each option, in RELION's syntax."""
    parts = []
    for label, value in options:
        text = value_text(value)
        if FORBIDDEN_IN_VALUES & set(text):
            raise PipelinerError(f"option {label!r} has a value RELION cannot take: {text!r}")
        parts.append(f"{label} == {text};")
    return "".join(parts)


def value_text(value: object) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln and ln != "ERROR:"]
    return (errors or lines or ["no output"])[-1]


def add_job(
    pipeliner: str, project: Path, job_type: str, options: Sequence[tuple[str, object]],
    env: dict[str, str], alias: str | None = None, timeout: float = 60,
) -> str:
    """``relion_pipeliner --addJob``; returns the new job's name, e.g. ``MotionCorr/job002/``."""
    before = set(process_names(project))
    argv = [pipeliner, "--addJob", job_type, "--addJobOptions", job_options(options)]
    if alias:
        argv += ["--setJobAlias", alias]
    proc = subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )
    added = [name for name in process_names(project) if name not in before]
    if proc.returncode != 0 or len(added) != 1:
        clear_stale_lock(project)
        raise PipelinerError(
            f"relion_pipeliner --addJob {job_type} failed: {_last_error(proc.stdout + proc.stderr)}"
        )
    return added[0]


def schedule_argv(
    pipeliner: str, schedule: str, jobs: Iterable[str], *, repeat: int = 1
) -> list[str]:
    """One scheduler pass over ``jobs``. The job list must end with a space (RELION 3.1 drops
    the last job otherwise). ``--sec_wait_after`` is how often the pipeliner looks whether the
    running job has ended: RELION's 10 s would add up to 10 s per job, and 0 makes it poll
    without pause (4.3 s of CPU in a 23 s pass); 1 s costs neither."""
    run_jobs = "".join(f"{job} " for job in jobs)
    return [
        pipeliner, "--schedule", schedule, "--repeat", str(repeat), "--min_wait", "0",
        "--sec_wait_after", "1", "--RunJobs", run_jobs,
    ]


def _loop_rows(text: str, block: str) -> list[list[str]]:
    """Rows of the loop in ``data_<block>`` of a STAR file (simple tokenisation, no quotes)."""
    match = re.search(rf"^data_{re.escape(block)}\s*$", text, re.M)
    if not match:
        return []
    rows: list[list[str]] = []
    in_loop = False
    for line in text[match.end():].splitlines():
        stripped = line.strip()
        if stripped.startswith("data_"):
            break
        if stripped.startswith("loop_"):
            in_loop = True
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("_"):
            if rows and not stripped:
                break
            continue
        if in_loop:
            rows.append(stripped.split())
    return rows


def star_column(path: Path, block: str, label: str) -> list[str]:
    """One column of the loop in ``data_<block>``; [] when the file or column is missing."""
    try:
        text = path.read_text(errors="surrogateescape")
    except FileNotFoundError:
        return []
    match = re.search(rf"^data_{re.escape(block)}\s*$", text, re.M)
    if not match:
        return []
    labels = re.findall(r"^\s*(_rln\w+)", text[match.end():].split("data_", 1)[0], re.M)
    if label not in labels:
        return []
    index = labels.index(label)
    return [row[index] for row in _loop_rows(text, block) if len(row) > index]


def star_value(path: Path, block: str, label: str) -> str | None:
    """A ``_label value`` pair of a block that is not a loop (``data_model_general``)."""
    try:
        text = path.read_text(errors="surrogateescape")
    except FileNotFoundError:
        return None
    match = re.search(rf"^data_{re.escape(block)}\s*$", text, re.M)
    if not match:
        return None
    body = text[match.end():].split("\ndata_", 1)[0]
    found = re.search(rf"^\s*{re.escape(label)}\s+(\S+)", body, re.M)
    return found.group(1) if found else None


def process_names(project: Path) -> list[str]:
    """Job names in ``default_pipeline.star``, in order."""
    star = project / PIPELINE_STAR
    if not star.exists():
        return []
    return [row[0] for row in _loop_rows(star.read_text(), "pipeline_processes") if row]


def star_count(path: Path, block: str) -> int:
    """Number of rows in a STAR loop, 0 when the file is missing or half-written."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return 0
    return len(_loop_rows(text, block))


def exit_state(project: Path, job: str) -> str | None:
    """'success', 'failure', 'aborted' or None (still running or never run)."""
    folder = project / job
    for name, state in ((EXIT_FAILURE, "failure"), (EXIT_ABORTED, "aborted"),
                        (EXIT_SUCCESS, "success")):
        if (folder / name).exists():
            return state
    return None


def clear_exit_files(project: Path, job: str) -> None:
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        try:
            (project / job / name).unlink()
        except FileNotFoundError:
            pass


def job_error(project: Path, job: str, lines: int = 3) -> str:
    """What went wrong in a job, from its ``run.err``: RELION's ``ERROR:`` block when there is
    one (without the backtrace), else the last non-empty lines."""
    try:
        text = (project / job / "run.err").read_text(errors="replace")
    except FileNotFoundError:
        return "no run.err"
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("sh:")]
    kept = [ln for ln in kept if "gs -sDEVICE" not in ln and "empty PDF" not in ln]
    if "ERROR:" in kept:
        block = []
        for line in kept[kept.index("ERROR:") + 1:]:
            if line.startswith("==="):
                break
            block.append(line)
        if block:
            return " ".join(block[:lines])
    return " | ".join(kept[-lines:]) or "run.err is empty"


def _submitted_lines(project: Path) -> list[tuple[str, str]]:
    path = project / SUBMITTED_JOBS
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "=":
            lines.append((parts[0], parts[2]))
    return lines


def read_submitted(project: Path) -> dict[str, str]:
    """``RELION_IT_SUBMITTED_JOBS`` (relion_it's ``name = Job/jobNNN/`` lines): name -> job.
    The first line of a name counts, as relion_it reads it."""
    jobs: dict[str, str] = {}
    for name, job in _submitted_lines(project):
        jobs.setdefault(name, job)
    return jobs


def record_submitted(project: Path, name: str, job: str) -> None:
    """Record ``name = job``: appended for a new name; a name already there (its job had gone
    from the pipeline and was added again) has its line replaced, never a second line that
    relion_it would not read."""
    lines = _submitted_lines(project)
    if any(known == name for known, _ in lines):
        kept: list[tuple[str, str]] = []
        for known, old in lines:
            if known == name:
                if all(k != name for k, _ in kept):
                    kept.append((name, job))
            else:
                kept.append((known, old))
        replace_with(project / SUBMITTED_JOBS,
                     "".join(f"{k} = {v}\n" for k, v in kept), SUBMITTED_JOBS)
        return
    with open_append(project / SUBMITTED_JOBS, SUBMITTED_JOBS) as handle:
        handle.write(f"{name} = {job}\n")
        handle.flush()
        os.fsync(handle.fileno())
