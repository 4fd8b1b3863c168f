"""The package as a facility installs it.

A wheel is built from this tree and installed into a fresh virtual environment; from a folder
outside the checkout, that environment's ``relion-zo status`` reads the real database with the
job-state SQL shipped in the wheel, and its dispatcher loads the recipes shipped in the wheel.

The environment sees this machine's site-packages (``--system-site-packages``), so the
dependencies come from what is installed already (``pip install --no-index`` resolves every
requirement of the wheel against them, with no network); the test proves that ``relion_zo``
itself, its SQL and its recipes are imported from the wheel, not from this checkout.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from sqlalchemy import insert
from sqlalchemy.orm import Session

from conftest import REPO
from ispyb.sqlalchemy import AutoProcProgram
from relion_zo.dispatcher import packaged_recipe_directory
from relion_zo.status import STOPPED_PREFIX
from runs import site_config, write_site_file

SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
PACKAGE_DATA = ("relion_zo/sql/job_status.sql", "relion_zo/recipes/relion.json",
                "relion_zo/recipes/relion-stop.json")
# The dev commands: the only modules outside relion_zo/devstack that may import it.
DEV_MODULES = {"relion_zo/cli/stack.py", "relion_zo/cli/demo.py", "relion_zo/cli/demo_data.py"}

PROBE = """
import importlib.resources, json, relion_zo
from relion_zo import dispatcher, status
folder = dispatcher.packaged_recipe_directory()
recipes = dispatcher.RecipeFolder(folder)
print(json.dumps({
    "package": relion_zo.__file__,
    "recipes": str(folder),
    "relion": recipes.load("relion").recipe[1]["queue"],
    "relion-stop": recipes.load("relion-stop").recipe[1]["queue"],
    "sql": str(importlib.resources.files("relion_zo") / "sql" / status.SQL_FILE),
    "sql_states": [s for s in status.STATES if f"'{s}'" in status.sql_text()],
}))
"""


def run(args: list, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A wheel of this tree (built from a copy, so the checkout gets no build folders) and a
    fresh venv with it installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "relion_zo", source / "relion_zo",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
         "--no-index", "--quiet", "--wheel-dir", dist, source], cwd=root, timeout=120)
    [wheel] = dist.glob("relion_zo-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    # pip (from the base environment) installs into the venv; every dependency must be met by
    # what is installed, since nothing may be fetched.
    run([python, "-m", "pip", "install", "--no-index", "--quiet", wheel], cwd=root, timeout=120)
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "venv": venv.resolve(), "python": python, "work": work}


def test_the_wheel_carries_the_sql_and_the_recipes(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert set(PACKAGE_DATA) <= names
    assert not {n for n in names if n.startswith(("sql/", "wrappers/", "tests/", "bench/"))}


def test_the_installed_package_loads_its_own_recipes_and_sql(installed):
    out = json.loads(run([installed["python"], "-c", PROBE], cwd=installed["work"]).stdout)
    venv = installed["venv"]
    for key in ("package", "recipes", "sql"):
        path = Path(out[key]).resolve()
        assert path.is_relative_to(venv), f"{key} comes from {path}, not the venv"
        assert not path.is_relative_to(REPO.resolve())
    assert (out["relion"], out["relion-stop"]) == ("relion", "relion.stop")
    assert out["sql_states"] == ["submitted", "queued", "running", "lost", "success",
                                 "stopped", "failure"]


def test_installed_status_reads_the_real_database(installed, engine, stack_settings,
                                                  live_visits, tmp_path):
    site = site_config(tmp_path, stack_settings)
    visit = live_visits(site)
    submitted = visit.start()
    stopped_visit = live_visits(site)
    stopped = stopped_visit.start()
    with Session(engine) as db:  # a finished program, as the wrapper would leave it
        db.execute(insert(AutoProcProgram).values(
            processingJobId=stopped, processingStatus=1,
            processingMessage=STOPPED_PREFIX + ": by the package test"))
        db.commit()
    config = write_site_file(site, tmp_path / "site.yaml")
    relion_zo = installed["venv"] / "bin" / "relion-zo"
    assert relion_zo.read_text().startswith(f"#!{installed['python']}")

    table = run([relion_zo, "status", "--config", config, "--visit", visit.name],
                cwd=installed["work"]).stdout
    header, row = table.splitlines()
    assert header.split()[:3] == ["job", "dcid", "state"]
    assert (row.split()[0], row.split()[2]) == (str(submitted), "submitted")
    rows = json.loads(run([relion_zo, "status", "--config", config, "--visit",
                           stopped_visit.name, "--json"], cwd=installed["work"]).stdout)
    assert [(r["processing_job_id"], r["state"]) for r in rows] == [(stopped, "stopped")]


def test_the_local_stack_names_the_package_recipes(stack_settings):
    config = yaml.safe_load(stack_settings.zocalo_config_path.read_text())
    folder = Path(config["storage"]["zocalo.recipe_directory"])
    assert folder == packaged_recipe_directory()
    assert {p.name for p in folder.glob("*.json")} == {"relion.json", "relion-stop.json"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_product_module_imports_the_devstack():
    package = REPO / "relion_zo"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name.startswith("relion_zo/devstack/") or name in DEV_MODULES:
            continue
        if any(i == "relion_zo.devstack" or i.startswith("relion_zo.devstack.")
               for i in _imports(path)):
            offenders.append(name)
    assert offenders == []
