"""Hostile input, as a careless or malicious user would give it, against the real MariaDB (and
RELION where a run is involved). Every case asserts: exit status 1, one line on stderr naming
the field, no traceback, no secret, no row written, no file outside the data roots, and no
marker file from a ``$(touch pwned)`` that reached a shell.

Broker-side poison messages are in ``test_poison.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from conftest import GOOD_PARAMS, REPO, new_visit_name, row_counts
from ispyb.sqlalchemy import AutoProcProgram, DataCollection, ProcessingJob, ProcessingJobParameter
from relion_zo.cli.main import main
from relion_zo.devstack import synthetic
from relion_zo.devstack.demo import seed_visit
from runs import error_messages, job_status, program_rows, site_config, write_site_file
from test_concurrent_start import _cleanup

MARKER = "pwned"
INJECT = f"$(touch {MARKER})"
SECRET = "s3cr3t-Pa55word"


class Hostile:
    """A committed visit with two good movies, a gain reference, a site file and a parameters
    file; ``args`` builds a ``relion-zo start`` command line for it."""

    def __init__(self, engine, site, tmp_path: Path):
        self.engine, self.site, self.tmp = engine, site, tmp_path
        self.name = new_visit_name()
        with Session(engine) as db:
            self.session_id = seed_visit(db, self.name, start=dt.datetime(2026, 11, 1))
        self.directory = site.data_roots[0] / "2026" / self.name
        self.raw = self.directory / "raw"
        self.processing = self.directory / "processing"
        synthetic.write_movies(self.raw, 2, size=64, frames=2)
        synthetic.write_gain(self.processing / "gain.mrc", size=64)
        self.site_file = write_site_file(site, tmp_path / "site.yaml")
        self.params = tmp_path / "params.yaml"
        self.params.write_text(yaml.safe_dump(GOOD_PARAMS))
        self.outside = tmp_path / "outside"
        self.outside.mkdir()

    def args(self, *extra: str, template: str = "*.mrc", site_file: Path | None = None):
        return ["start", "--no-send", "--config", str(site_file or self.site_file),
                "--visit", self.name, "--image-directory", str(self.raw),
                "--file-template", template, "--params-file", str(self.params), *extra]

    def setting(self, key: str, value: str) -> list[str]:
        """``start`` arguments that set ``key`` with ``-p`` (and not in the parameters file)."""
        self.params.write_text(yaml.safe_dump({k: v for k, v in GOOD_PARAMS.items() if k != key}))
        return self.args("-p", f"{key}={value}")

    def movie_copy(self, name: str | bytes, folder: Path | None = None) -> Path:
        """A good movie under another (possibly hostile) name."""
        folder = folder or self.raw
        target = os.path.join(os.fsencode(folder), os.fsencode(name))
        shutil.copyfile(self.raw / "movie_0001.mrc", target)
        return Path(os.fsdecode(target))

    def bad_site(self, change: dict | str) -> Path:
        path = self.tmp / "bad-site.yaml"
        if isinstance(change, str):
            path.write_text(change)
        else:
            data = yaml.safe_load(self.site_file.read_text())
            data.update(change)
            path.write_text(yaml.safe_dump(data))
        return path


@pytest.fixture
def hostile(engine, site, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell that ran would touch the marker here
    h = Hostile(engine, site, tmp_path)
    yield h
    _cleanup(engine, h.session_id)


def markers(*folders: Path) -> list[Path]:
    found = []
    for folder in {Path(f) for f in folders}:
        found += [p for p in folder.rglob(MARKER)]
    return found


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _ini(h: Hostile, text: str) -> Path:
    ini = _write(h.tmp / "bad.ini", text)
    ini.chmod(0o600)
    return h.bad_site({"ispyb_credentials": str(ini), "ispyb_web_credentials": str(ini)})


# Each case: (id, set-up (returns the argv), words the one-line error must hold).
START_CASES = [
    ("movie name runs a command",
     lambda h: (h.movie_copy(f"a{INJECT}.mrc"), h.args())[1], "contains '$'"),
    ("movie name with backticks",
     lambda h: (h.movie_copy(f"b`touch {MARKER}`.mrc"), h.args())[1], "contains '`'"),
    ("movie name not UTF-8",
     lambda h: (h.movie_copy(b"c\xff.mrc"), h.args())[1], "is not valid UTF-8"),
    ("movie name starts with a dash",
     lambda h: (h.movie_copy("-rf.mrc"), h.args())[1], "starting with '-'"),
    ("template runs a command",
     lambda h: h.args(template=f"*{INJECT}.mrc"), "file template"),
    ("template with a quote", lambda h: h.args(template='*".mrc'), "file template"),
    ("template over 255 characters", lambda h: h.args(template="x" * 300 + ".mrc"),
     "file template is longer than 255"),
    ("gain name runs a command",
     lambda h: (_write(h.processing / f"g{INJECT}.mrc", b""),
                h.args("-p", f"motioncor_gainreference=g{INJECT}.mrc"))[1],
     "parameter motioncor_gainreference: contains '$'"),
    ("gain name with backticks",
     lambda h: h.args("-p", f"motioncor_gainreference=g`touch {MARKER}`.mrc"),
     "parameter motioncor_gainreference: contains '`'"),
    ("gain name with a space",
     lambda h: (shutil.copyfile(h.processing / "gain.mrc", h.processing / "my gain.mrc"),
                h.args("-p", "motioncor_gainreference=my gain.mrc"))[1],
     "parameter motioncor_gainreference: contains a space"),
    ("defect file runs a command",
     lambda h: h.args("-p", f"motioncor_defectfile=d{INJECT}.txt"),
     "parameter motioncor_defectfile: contains '$'"),
    ("import_images runs a command",
     lambda h: h.args("-p", f"import_images=Movies/{INJECT}*.mrc"),
     "parameter import_images: contains '$'"),
    ("import_images outside the raw folder",
     lambda h: (h.movie_copy("x.mrc", _write(h.directory / "other" / "k", "").parent),
                h.args("-p", f"import_images={h.directory}/other/*.mrc"))[1],
     "not inside the raw folder"),
    ("import_images climbs out", lambda h: h.args("-p", "import_images=Movies/../*.mrc"),
     "must not contain '..'"),
    ("a folder named like a movie",
     lambda h: ((h.raw / "folder.mrc").mkdir(), h.args())[1], "is not a file"),
    ("a movie link out of the visit",
     lambda h: (os.symlink(h.movie_copy("real.mrc", h.outside), h.raw / "link.mrc"),
                h.args())[1], "leads outside the visit"),
    ("angpix with an underscore", lambda h: h.setting("angpix", "1_0"),
     "parameter angpix: is not a number"),
    ("voltage NaN", lambda h: h.setting("voltage", "NaN"),
     "parameter voltage: must be a finite number"),
    ("Cs infinite", lambda h: h.setting("Cs", "inf"), "parameter Cs: must be a finite number"),
    ("display name too long", lambda h: h.args("--display-name", "x" * 81),
     "display name is longer than 80"),
    ("comments too long", lambda h: h.args("--comments", "x" * 256),
     "comments are longer than 255"),
    ("parameters file repeats a key",
     lambda h: (_write(h.params, "angpix: 1.0\nangpix: 2.0\nvoltage: 300\nCs: 2.7\n"
                       "motioncor_doseperframe: 1\n"), h.args())[1],
     "'angpix' is given more than once"),
    ("parameters file not UTF-8", lambda h: (_write(h.params, b"angpix: \xff\n"), h.args())[1],
     "is not UTF-8 text"),
    ("-p repeats a parameters file key", lambda h: h.args("-p", "angpix=2"),
     "parameter angpix: given more than once"),
    ("credentials with a setting before the section",
     lambda h: h.args(site_file=_ini(h, f"password = {SECRET}\n[ispyb_sqlalchemy]\n")),
     "line 1: a setting before any [section] header"),
    ("credentials with an option twice",
     lambda h: h.args(site_file=_ini(h, f"[ispyb_sqlalchemy]\npassword = {SECRET}\n"
                                        f"password = {SECRET}x\n")),
     "option 'password' is given twice"),
    ("credentials with a bad port",
     lambda h: h.args(site_file=_ini(h, f"[ispyb_sqlalchemy]\nusername = u\npassword = {SECRET}"
                                        "\nhost = 127.0.0.1\nport = ²\ndatabase = d\n")),
     "port is not a port number"),
    ("credentials not UTF-8",
     lambda h: h.args(site_file=_ini(h, b"[ispyb_sqlalchemy]\npassword = \xff\n")),
     "is not UTF-8 text"),
    ("site data_roots a string, not a list",
     lambda h: h.args(site_file=h.bad_site({"data_roots": "/dls/m02/data"})),
     "data_roots must be a list"),
    ("site data root /", lambda h: h.args(site_file=h.bad_site({"data_roots": ["/"]})),
     "may not be the file system's root"),
    ("site heartbeat infinite",
     lambda h: h.args(site_file=h.bad_site({"heartbeat_seconds": float("inf")})),
     "heartbeat_seconds"),
    ("site idle time absurd", lambda h: h.args(site_file=h.bad_site({"idle_seconds": 1e12})),
     "idle_seconds"),
    ("site project template with a stray brace",
     lambda h: h.args(site_file=h.bad_site({"project_directory": "{visit_directory}/p{"})),
     "project_directory: is not a valid template"),
    ("site project template reaching into attributes",
     lambda h: h.args(site_file=h.bad_site(
         {"project_directory": "{visit_directory.__class__}/x"})),
     "project_directory: names {visit_directory.__class__}"),
    ("site file repeats a key",
     lambda h: h.args(site_file=h.bad_site(h.site_file.read_text() + "idle_seconds: 1\n"
                                           "idle_seconds: 2\n")),
     "'idle_seconds' is given more than once"),
    ("site executable runs a command",
     lambda h: h.args(site_file=h.bad_site({"executables": {"ctffind": f"ctffind{INJECT}"}})),
     "executables.ctffind: contains '$'"),
    ("a queue at a site without one",
     lambda h: h.args("-p", "refine_submit_to_queue=true"),
     "parameter refine_submit_to_queue: queue submission is not configured at this site"),
    ("a queue name that runs a command", lambda h: h.args("-p", f"queue_name=q{INJECT}"),
     "parameter queue_name: "),
    ("a submit command of the job's own",
     lambda h: h.args("-p", f"queue_submit_command=sh -c {INJECT}"),
     "parameter queue_submit_command: queue submission is not configured at this site"),
    ("site queue command runs a command",
     lambda h: h.args(site_file=h.bad_site({"queue": {"submit_command": f"sbatch{INJECT}"}})),
     "queue.submit_command: contains '$'"),
]


@pytest.mark.parametrize("setup, words", [c[1:] for c in START_CASES],
                         ids=[c[0] for c in START_CASES])
def test_start_refuses_hostile_input(hostile, db, capsys, setup, words):
    argv = setup(hostile)
    before = row_counts(db)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and SECRET not in err
    assert row_counts(db) == before
    assert not markers(hostile.tmp, Path.cwd(), REPO)


def test_project_template_outside_the_visit_is_refused(hostile, db, capsys):
    # A template that is valid but leads out of the visit: checked at Start, nothing written.
    site_file = hostile.bad_site({"project_directory": str(hostile.outside) + "/relion_"
                                  "{processing_job_id}"})
    before = row_counts(db)
    assert main(hostile.args(site_file=site_file)) == 1
    assert "project directory" in capsys.readouterr().err
    assert row_counts(db) == before


def test_readable_credentials_are_used_with_a_warning(hostile, capsys, stack_settings):
    ini = hostile.tmp / "open.ini"
    shutil.copyfile(stack_settings.processing_credentials_path, ini)
    ini.chmod(0o644)
    site_file = hostile.bad_site({"ispyb_credentials": str(ini)})
    assert main(["status", "--config", str(site_file), "--visit", hostile.name]) == 0
    err = capsys.readouterr().err
    assert "can be read by other users" in err and "chmod 600" in err


# ---------------------------------------------------------------- reprocess


def _good_job(h: Hostile, capsys) -> int:
    assert main(h.args("--json")) == 0
    return json.loads(capsys.readouterr().out)["processing_job_id"]


def _close(engine, site, pjid: int) -> None:
    from relion_zo.manager import JobManager

    JobManager(engine, site).request_stop(pjid, "test")


@pytest.mark.parametrize("setup, words", [
    (lambda h, p: ["--set", f"import_images=Movies/{INJECT}*.mrc", str(p)],
     "parameter import_images: contains '$'"),
    (lambda h, p: ["--set", f"motioncor_gainreference=`touch {MARKER}`", str(p)],
     "parameter motioncor_gainreference"),
    (lambda h, p: ["--from-file", str(_write(h.tmp / "ids.txt", f"{p}\n²\n"))],
     "line 2: '²' is not a job id"),
    (lambda h, p: ["--from-file", str(_write(h.tmp / "ids.bin", b"\xff\n"))], "not UTF-8"),
    (lambda h, p: ["--from-file", str(_write(h.tmp / "ids.txt", f"{p}\n")),
                   *((h.tmp / "ids.txt.done").mkdir() or [])],
     "cannot write the ledger"),
], ids=["--set runs a command", "--set with backticks", "id file with a superscript two",
        "id file not UTF-8", "ledger cannot be written"])
def test_reprocess_refuses_hostile_input(hostile, db, capsys, setup, words):
    pjid = _good_job(hostile, capsys)
    _close(hostile.engine, hostile.site, pjid)
    argv = ["reprocess", "--no-send", "--config", str(hostile.site_file),
            *setup(hostile, pjid)]
    before = row_counts(db)
    assert main(argv) == 1
    captured = capsys.readouterr()
    out = captured.err + captured.out
    assert words in out, out
    assert "Traceback" not in out
    assert row_counts(db) == before
    assert not markers(hostile.tmp, REPO)


# ---------------------------------------------------------------- run (real RELION)


@pytest.fixture
def run_site(tmp_path, stack_settings):
    return site_config(tmp_path, stack_settings, movie_wait_seconds=2)


@pytest.fixture
def live(run_site, live_visits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return live_visits(run_site, movies=2)


def _run(site, tmp_path, pjid: int, capsys) -> tuple[int, str]:
    site_file = write_site_file(site, tmp_path / "run-site.yaml")
    code = main(["run", "--config", str(site_file), str(pjid)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _good_movie(live, name: str | bytes, folder: Path | None = None) -> Path:
    folder = folder or live.raw
    target = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))
    shutil.copyfile(live.raw / "movie_0001.mrc", target)
    return target


def _truncate(live, name: str) -> None:
    data = (live.raw / "movie_0001.mrc").read_bytes()
    (live.raw / name).write_bytes(data[: len(data) // 2])
    old = 1_700_000_000
    os.utime(live.raw / name, (old, old))  # settled: not a movie still being copied


RUN_CASES = [
    ("a movie that runs a command arrives after Start",
     lambda live, tmp: _good_movie(live, f"z{INJECT}.mrc"), "contains '$'"),
    ("a movie whose name is not UTF-8 arrives after Start",
     lambda live, tmp: _good_movie(live, b"z\xfe.mrc"), "is not valid UTF-8"),
    ("a movie link out of the visit arrives after Start",
     lambda live, tmp: os.symlink(_good_movie(live, "x.mrc", tmp), live.raw / "z.mrc"),
     "leads outside the visit"),
    ("a truncated movie",
     lambda live, tmp: _truncate(live, "z.mrc"), "is incomplete"),
    ("every movie deleted after Start",
     lambda live, tmp: [p.unlink() for p in live.raw.glob("*.mrc")], "no movie was imported"),
]


@pytest.mark.relion
@pytest.mark.parametrize("setup, words", [c[1:] for c in RUN_CASES],
                         ids=[c[0] for c in RUN_CASES])
def test_run_refuses_bad_movies_and_never_succeeds_on_nothing(
    engine, run_site, live, tmp_path, capsys, setup, words
):
    pjid = live.start()
    setup(live, tmp_path)
    code, out = _run(run_site, tmp_path, pjid, capsys)
    assert code == 1, out
    state = job_status(engine, run_site, pjid)
    assert state.state == "failure" and words in state.message, state.message
    [program] = program_rows(engine, pjid)
    assert any(words in m for m in error_messages(engine, program.autoProcProgramId))
    assert not markers(tmp_path, REPO), "a movie name reached a shell"
    assert "Traceback" not in out


@pytest.mark.relion
def test_run_refuses_a_planted_project_folder(engine, run_site, live, tmp_path, capsys):
    # The next job id is predictable: a folder planted there, with links to files elsewhere,
    # must not receive anything.
    pjid = live.start(motioncor_gainreference="gain.mrc")
    victim = _write(tmp_path / "victim.txt", "keep me\n")
    planted = live.project(pjid)
    planted.mkdir(parents=True)
    for name in ("gain.mrc.part", "relion_zo_run.log", "relion_it_options.py.part"):
        os.symlink(victim, planted / name)
    code, out = _run(run_site, tmp_path, pjid, capsys)
    assert code == 1
    state = job_status(engine, run_site, pjid)
    assert state.state == "failure" and "already exists" in state.message
    assert victim.read_text() == "keep me\n"
    assert sorted(p.name for p in planted.iterdir()) == sorted(
        ["gain.mrc.part", "relion_zo_run.log", "relion_it_options.py.part"])


@pytest.mark.relion
def test_run_refuses_a_template_another_tool_wrote(engine, run_site, live, tmp_path, capsys):
    # A DataCollection row written by another tool, with a template that would run a command.
    pjid = live.start()
    with Session(engine) as db:
        dcid = db.execute(select(ProcessingJob.dataCollectionId).where(
            ProcessingJob.processingJobId == pjid)).scalar_one()
        db.execute(DataCollection.__table__.update().where(
            DataCollection.dataCollectionId == dcid).values(fileTemplate=f"*{INJECT}.mrc"))
        db.commit()
    code, out = _run(run_site, tmp_path, pjid, capsys)
    assert code == 1
    state = job_status(engine, run_site, pjid)
    assert state.state == "failure" and "file template" in state.message
    assert not markers(tmp_path, REPO)


def test_run_leaves_another_pipelines_job_alone(engine, run_site, live, tmp_path, capsys):
    pjid = live.start()
    with Session(engine) as db:
        dcid = db.execute(select(ProcessingJob.dataCollectionId).where(
            ProcessingJob.processingJobId == pjid)).scalar_one()
        other = db.execute(insert(ProcessingJob).values(
            dataCollectionId=dcid, recipe="em-spa-preprocess", displayName="other")
        ).inserted_primary_key[0]
        db.execute(insert(ProcessingJobParameter).values(
            processingJobId=other, parameterKey="angpix", parameterValue="1"))
        db.commit()
    code, out = _run(run_site, tmp_path, other, capsys)
    assert code == 1 and "has recipe 'em-spa-preprocess'" in out
    with Session(engine) as db:
        assert db.execute(select(func.count()).select_from(AutoProcProgram).where(
            AutoProcProgram.processingJobId == other)).scalar() == 0


# ---------------------------------------------------------------- every other command


@pytest.mark.parametrize("argv, code, words", [
    (["run", "abc"], 2, "argument job: 'abc' is not an id"),
    (["run", "٣"], 2, "'٣' is not an id"),  # int() would take an Arabic-Indic digit
    (["run", "0"], 2, "'0' is not an id"),
    (["run", "9" * 30], 2, "is not an id"),
    (["status", "--dcid", "1e3"], 2, "'1e3' is not an id"),
    (["stop", "--local", "987654321"], 1, "unknown processing job 987654321"),
    (["status", "--visit", "x'; DROP TABLE BLSession; --"], 1, "is not a visit name"),
    (["reap", "--visit", "../../etc"], 1, "is not a visit name"),
    (["restart", "--local", "--dcid", "987654321"], 1, "unknown data collection 987654321"),
    (["reprocess", "--no-send", "987654321"], 1, "unknown processing job 987654321"),
    (["start", "--no-send", "--dcid", "987654321", "-p", "angpix=1", "-p", "voltage=300",
      "-p", "Cs=2.7", "-p", "motioncor_doseperframe=1", "-p", "stop_after_motion_correction=1"],
     1, "unknown data collection"),
    (["start", "--no-send", "--visit", "cm1-1", "--image-directory", "relative/raw",
      "--file-template", "*.mrc", "-p", "angpix=1", "-p", "voltage=300", "-p", "Cs=2.7",
      "-p", "motioncor_doseperframe=1", "-p", "stop_after_motion_correction=1"], 1,
     "unknown visit"),
], ids=lambda v: str(v)[:40] if isinstance(v, list) else None)
def test_every_command_answers_bad_input_in_one_line(hostile, db, capsys, argv, code, words):
    before = row_counts(db)
    full = [argv[0], "--config", str(hostile.site_file), *argv[1:]]
    assert main(full) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert row_counts(db) == before


# ---------------------------------------------------------------- Start and the broker


def test_start_writes_nothing_when_rabbitmq_cannot_be_reached(hostile, db, capsys):
    closed = hostile.tmp / "closed.yaml"
    data = yaml.safe_load(Path(hostile.site.zocalo_path()).read_text())
    data["rabbitmq"]["port"] = 1  # nothing listens there
    closed.write_text(yaml.safe_dump(data))
    closed.chmod(0o600)
    site_file = hostile.bad_site({"zocalo_config": str(closed)})
    argv = [a for a in hostile.args(site_file=site_file) if a != "--no-send"]
    before = row_counts(db)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to RabbitMQ") and len(err.splitlines()) == 1
    assert err.strip() != "error: cannot connect to RabbitMQ:"  # a reason, not an empty one
    assert row_counts(db) == before


def test_a_start_whose_message_was_lost_is_sent_again(hostile, db, capsys, stack_settings):
    from relion_zo import broker

    pjid = _good_job(hostile, capsys)  # written, never sent: as if the send had failed
    queue = broker.PROCESSING_RECIPE
    zocalo = stack_settings.zocalo_config_path
    depth = broker.queue_depths(zocalo, [queue])[queue]
    before = row_counts(db)
    argv = [a for a in hostile.args() if a != "--no-send"]
    try:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert out.strip() == f"processing job {pjid} was submitted before and never picked up; " \
                              "sent again"
        assert row_counts(db) == before
        assert broker.queue_depths(zocalo, [queue])[queue] == depth + 1
        # Other parameters are another job: refused while this one is active.
        assert main(argv + ["-p", "motioncor_binning=2"]) == 1
        assert f"already has active processing job {pjid} (submitted)" in capsys.readouterr().err
    finally:
        broker.purge(zocalo, [queue])
