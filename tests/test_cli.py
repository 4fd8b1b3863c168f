"""The CLI in-process: start and status on the real database, one-line errors, exit codes.

These commands commit through their own connections, so each test uses a visit of its own and
removes what it made.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from sqlalchemy.orm import Session

from conftest import GOOD_PARAMS, new_visit_name, row_counts
from relion_zo.cli.main import main
from relion_zo.devstack import synthetic
from relion_zo.devstack.demo import seed_visit
from test_concurrent_start import _cleanup


@pytest.fixture
def cli_visit(engine, site, tmp_path):
    name = new_visit_name()
    with Session(engine) as db:
        session_id = seed_visit(db, name, start=dt.datetime(2026, 11, 1))
    raw = site.data_roots[0] / "2026" / name / "raw"
    synthetic.write_movies(raw, 2, size=64, frames=2)
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(json.loads(site.model_dump_json())))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(GOOD_PARAMS))
    yield {"name": name, "raw": raw, "config": str(config), "params": str(params)}
    _cleanup(engine, session_id)


def _start(v, *extra):
    return main(["start", "--no-send", "--config", v["config"], "--visit", v["name"],
                 "--image-directory",
                 str(v["raw"]), "--file-template", "*.mrc", "--params-file", v["params"], *extra])


def test_start_then_status_then_refused(cli_visit, capsys):
    assert _start(cli_visit, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    pjid = result["processing_job_id"]
    assert main(["status", "--config", cli_visit["config"], "--visit", cli_visit["name"]]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["job", "dcid", "state", "started", "heartbeat", "message"]
    assert table[1].split()[:3] == [str(pjid), str(result["data_collection_id"]), "submitted"]
    assert main(["status", "--config", cli_visit["config"], str(pjid), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "submitted" and row["processing_job_id"] == pjid
    assert _start(cli_visit) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: data collection {result['data_collection_id']} already has active "
                   f"processing job {pjid} (submitted); stop it first or use restart")


def test_parameter_errors_are_one_line_and_write_nothing(cli_visit, capsys, db):
    before = row_counts(db)
    assert _start(cli_visit, "-p", "voltage=lots") == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: parameter voltage") and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert _start(cli_visit, "-p", "angpix") == 1
    assert "expected key=value" in capsys.readouterr().err
    assert row_counts(db) == before


def test_status_errors(cli_visit, capsys):
    assert main(["status", "--config", cli_visit["config"], "987654321"]) == 1
    assert capsys.readouterr().err.strip() == "error: unknown processing job 987654321"
    assert main(["status", "--config", cli_visit["config"], "--visit", "zz1-1"]) == 1
    assert "unknown visit zz1-1" in capsys.readouterr().err
    assert main(["status", "--config", cli_visit["config"]]) == 1
    assert "exactly one" in capsys.readouterr().err


def test_usage(capsys):
    assert main([]) == 2
    assert main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["start", "--help"]) == 0
    assert "--image-directory" in capsys.readouterr().out
