"""A full disk is named as the cause, with the path, whether a RELION job fails on it or the
driver's own first write does. The disk is a real 3 MB tmpfs (the tests run as root, as on the
facility's test machines); the thresholds are checked with a statvfs stand-in."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from standins import driver_settings, kill_left, nothing_left, run_limited, standin

from relion_zo.relion_it import pipeliner as pl
from relion_zo.relion_it.driver import no_space_reason, write_error_reason

MB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True,
                   capture_output=True)
    try:
        yield disk
    finally:
        kill_left(disk / "project")
        unmounted = subprocess.run(["umount", str(disk)], check=False, capture_output=True)
        if unmounted.returncode != 0:  # still busy: detach it now, it goes once unused
            subprocess.run(["umount", "-l", str(disk)], check=True, capture_output=True)


def fill(disk: Path) -> None:
    """Write zeros on ``disk`` until it is full."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(64 * 1024))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_job_that_fails_on_a_full_disk_says_so(tmp_path, small_disk):
    project = small_disk / "project"
    bin_dir = tmp_path / "bin"
    # As a motion correction does when its output no longer fits: run.err stays empty (it is
    # on the full disk too), the job fails.
    standin(bin_dir, "relion_run_motioncorr",
            'while [ $# -gt 0 ]; do [ "$1" = --o ] && out=$2; shift; done\n'
            'head -c 10000000 /dev/zero > "${out}corrected.mrc"\n'
            'touch "${out}RELION_JOB_EXIT_FAILURE"\n'
            "exit 1\n")
    settings = driver_settings(tmp_path, project, bin_dir, stall_seconds=20)

    result = run_limited(settings)

    assert result.outcome == "failed"
    assert result.reason == (
        f"MotionCorr/job002/ failed: no space left on the disk holding {project}")
    assert nothing_left(project) == []
    assert not (project / pl.RUNNING_RELION_IT).exists()


def test_a_full_disk_before_the_start_is_named(tmp_path, small_disk):
    project = small_disk / "project"
    settings = driver_settings(tmp_path, project, tmp_path / "bin")
    fill(small_disk)

    result = run_limited(settings)

    assert result.outcome == "failed"
    assert result.reason.startswith(f"no space left on the disk holding {project}")
    assert "Errno" not in result.reason


def _disk(size: int, free: int, inodes: int = 1000, free_inodes: int = 500):
    block = 4096
    return lambda path: SimpleNamespace(
        f_frsize=block, f_blocks=size // block, f_bavail=free // block,
        f_files=inodes, f_favail=free_inodes)


def test_nearly_full_means_little_room_for_the_disks_size():
    path = Path("/data/project")
    full = f"no space left on the disk holding {path}"
    assert no_space_reason(path, _disk(2**50, 10 * 2**30)) is None  # 10 GB of 1 PB free
    assert no_space_reason(path, _disk(2**50, 10 * MB)) == full
    assert no_space_reason(path, _disk(3 * MB, 2 * MB)) is None  # a small disk, mostly free
    assert no_space_reason(path, _disk(3 * MB, 100 * 1024)) == full
    assert no_space_reason(path, _disk(2**40, 2**39, free_inodes=0)) == (
        f"no free inodes left on the disk holding {path}")
    assert no_space_reason(path, _disk(2**40, 2**39, inodes=0, free_inodes=0)) is None  # btrfs

    def gone(path):
        raise FileNotFoundError(path)

    assert no_space_reason(path, gone) is None


def test_a_failed_write_is_named_only_for_want_of_space():
    project = Path("/data/project")
    assert write_error_reason(OSError(errno.ENOSPC, "No space left on device"), project) == (
        f"no space left on the disk holding {project}")
    assert write_error_reason(
        OSError(errno.ENOSPC, "No space left on device", str(project / "a.star")), project
    ) == f"no space left on the disk holding {project} (writing {project / 'a.star'})"
    assert write_error_reason(OSError(errno.EDQUOT, "Disk quota exceeded"), project) == (
        f"disk quota exceeded on the disk holding {project}")
    assert write_error_reason(OSError(errno.EACCES, "Permission denied"), project) is None
