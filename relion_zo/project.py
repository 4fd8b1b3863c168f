"""The RELION project directory: where it goes, the Movies link, the gain reference."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import mrcfile

from relion_zo.errors import InputError
from relion_zo.paths import (
    check_shell_safe,
    checked_relative,
    confine,
    open_new,
    replace_with,
    shown_path,
)

PROCESSING_FOLDER = "processing"


def visit_file(value: str, visit_dir: Path, what: str) -> Path:
    """A file named in the parameters: absolute, or relative to ``<visit>/processing``; it must
    exist and resolve (links followed) inside the visit."""
    path = Path(value)
    if not path.is_absolute():
        checked_relative(value, what)
        path = visit_dir / PROCESSING_FOLDER / path
    elif ".." in path.parts:
        raise InputError(f"{what} {value!r} must not contain '..'")
    check_shell_safe(str(path), what)
    if not path.is_file():
        raise InputError(f"{what} {shown_path(path)} does not exist or is not a file")
    real = confine(path, [visit_dir], what)
    check_shell_safe(str(real), what)
    return real


def check_gain_reference(value: str, visit_dir: Path) -> Path:
    """The gain reference must exist inside the visit and read as a 2D MRC image."""
    path = visit_file(value, visit_dir, "gain reference")
    real = path
    try:
        with mrcfile.open(real, permissive=False, header_only=True) as mrc:
            nx, ny, nz = (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz))
    except (ValueError, OSError) as exc:
        raise InputError(f"gain reference {path} is not a readable MRC image: {exc}") from None
    if nx < 1 or ny < 1 or nz != 1:
        raise InputError(f"gain reference {path} is not a single 2D image ({nx}x{ny}x{nz})")
    return real


MOVIES_LINK = "Movies"
OWNER_FILE = ".relion_zo_job"  # written when the run creates the project: whose folder it is


def project_directory(config, visit_dir: Path, processing_job_id: int) -> Path:
    """The job's RELION project from the site template; it must stay inside the visit."""
    try:
        text = config.project_directory.format(
            visit_directory=visit_dir, processing_job_id=processing_job_id
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"project_directory template cannot be filled in: {exc}") from None
    path = Path(text)
    if not path.is_absolute() or ".." in path.parts:
        raise InputError(f"project directory {text!r} must be absolute and without '..'")
    # Resolve the part that exists (links followed) and check it, then the whole path.
    existing = path
    while not existing.exists():
        existing = existing.parent
    real = existing.resolve() / path.relative_to(existing)
    confine(real, config.data_roots, "project directory")
    confine(real, [visit_dir], "project directory")
    check_shell_safe(text, "project directory")
    return path


def check_new_project(path: Path) -> Path:
    """A job's project must not exist before its run creates it: a folder (or link) planted
    there could redirect what the run writes."""
    if os.path.lexists(path):
        raise InputError(f"project directory {path} already exists; relion_zo only writes into "
                         "a folder it created for this job")
    return path


def owned_project(path: Path, processing_job_id: int) -> bool:
    """True when ``path`` is a folder this job's run created: a real folder (not a link)
    owned by this user, writable by no one else, whose owner file names this job."""
    try:
        folder = os.lstat(path)
        owner = os.lstat(path / OWNER_FILE)
    except OSError:
        return False
    uid = os.geteuid()
    if not (stat.S_ISDIR(folder.st_mode) and stat.S_ISREG(owner.st_mode)):
        return False
    if folder.st_uid != uid or owner.st_uid != uid or folder.st_mode & 0o022:
        return False
    text = (path / OWNER_FILE).read_text(errors="replace").strip()
    return text == f"processing_job_id = {processing_job_id}"


def create_project(
    path: Path, roots: list[Path], processing_job_id: int, *, resume: bool = False
) -> Path:
    """Create the project folder (its parents may exist), check where it really is, and
    record whose it is. Refuses a folder that is already there, unless ``resume`` and it is
    this job's own (``owned_project``)."""
    if resume and owned_project(path, processing_job_id):
        confine(path, roots, "project directory")
        return path
    check_new_project(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        check_new_project(path)
        raise
    path.chmod(0o755)
    confine(path, roots, "project directory")
    with open_new(path / OWNER_FILE, "project owner file") as handle:
        handle.write(f"processing_job_id = {processing_job_id}\n")
    return path


def movies_glob(import_images: str | None, image_directory: Path, file_template: str) -> str:
    """``import_images`` relative to the project: always ``Movies/<glob inside the raw folder>``."""
    value = import_images or file_template
    if value.startswith("/"):
        try:
            value = str(Path(value).relative_to(image_directory))
        except ValueError:
            raise InputError(
                f"parameter import_images {import_images!r} is not inside the raw folder "
                f"{image_directory}"
            ) from None
    elif value.startswith(MOVIES_LINK + "/"):
        value = value[len(MOVIES_LINK) + 1:]
    checked_relative(value, "import_images")
    check_shell_safe(value, "import_images", glob=True)
    return f"{MOVIES_LINK}/{value}"


def link_movies(project: Path, image_directory: Path) -> Path:
    """``Movies`` -> the raw folder, as a relative link; an existing link must agree."""
    link = project / MOVIES_LINK
    target = Path(os.path.relpath(image_directory, project))
    if link.is_symlink():
        if link.resolve() != image_directory.resolve():
            raise InputError(f"{link} already points to {os.readlink(link)}, not {image_directory}")
        return link
    if link.exists():
        raise InputError(f"{link} exists and is not a link to the raw folder")
    link.symlink_to(target, target_is_directory=True)
    return link


def copy_gain(project: Path, gain: Path) -> str:
    """Copy the checked gain reference into the project; returns its project-relative name."""
    name = "gain_" + gain.name if not gain.name.startswith("gain") else gain.name
    check_shell_safe(name, "gain reference")
    replace_with(project / name, gain.read_bytes(), "gain reference copy")
    return name
