"""``relion_it_options.py`` in relion_it's own format: a Python file of ``name = value`` lines
that RELION's ``relion_it.py`` reads with ``runpy`` and ``RelionItOptions.update_from``, so a
scientist can carry on by hand from the same project."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

from relion_zo import __version__
from relion_zo.parameters import FIELDS, NOT_APPLICABLE, RELION_ZO_ONLY, RelionItParameters
from relion_zo.paths import replace_with

OPTIONS_FILE = "relion_it_options.py"
# relion_zo's own keys (relion_it would print "Unrecognised option" for them) and the keys a web
# UI writes that inform nothing: neither is a relion_it option.
NOT_RELION_IT = RELION_ZO_ONLY | frozenset(NOT_APPLICABLE)


def options_text(
    params: RelionItParameters,
    overrides: dict[str, object],
    *,
    processing_job_id: int,
    now: dt.datetime | None = None,
) -> str:
    """Every option relion_zo knows, with the project's own paths in ``overrides``."""
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"# relion_it options for ISPyB processing job {processing_job_id},",
        f"# written by relion_zo {__version__} on {stamp}.",
        "# Continue by hand with RELION's own script: relion_it.py relion_it_options.py",
    ]
    values = {k: getattr(params, k) for k in FIELDS if k not in NOT_RELION_IT}
    values.update(overrides)
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def write_options(project: Path, text: str, now: dt.datetime | None = None) -> Path:
    """Write the options file; one that says something else (a scientist's, an older run's)
    is kept first as ``relion_it_options.py.bak-<time>``."""
    path = project / OPTIONS_FILE
    if path.is_file() and not path.is_symlink() and _settings(path.read_text()) != _settings(text):
        stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        replace_with(path.with_name(f"{OPTIONS_FILE}.bak-{stamp}"), path.read_bytes(),
                     "options file backup")
    replace_with(path, text, "relion_it options file")
    return path


def _settings(text: str) -> list[str]:
    """The lines that set something (comments, such as the time stamp, left out)."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def read_options(path: Path) -> dict[str, object]:
    """Read an options file back without running it (for tests and for operators)."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                values[target.id] = ast.literal_eval(node.value)
    return values
