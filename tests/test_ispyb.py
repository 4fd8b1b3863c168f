"""Running against a facility's ISPyB: each side with only the grants of relion_zo/sql/grants.sql,
latin1 tables, the schema version, and the jobs PATo and SynchWeb write, by SQL, as they write
them (docs/web-uis.md has the facts and their sources)."""

from __future__ import annotations

import json
import re
import secrets
import time
from importlib import resources
from pathlib import Path

import pika
import pytest
from conftest import TEST_MACHINE, row_counts
from ispyb.sqlalchemy import (
    AutoProcProgram,
    AutoProcProgramMessage,
    DataCollection,
    DataCollectionGroup,
    ProcessingJob,
    ProcessingJobParameter,
)
from runs import job_status, program_rows, site_config, write_site_file
from sqlalchemy import insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from ui_jobs import pato_rows, synchweb_rows

from relion_zo import broker, schema
from relion_zo.cli.main import main as cli
from relion_zo.devstack import stack, synthetic
from relion_zo.manager import JobManager, Outcome
from relion_zo.runner import run_job

LIMIT = 180  # guards against hangs, not speed

# ISPyB's own roles (ispyb-database, grants/ispyb_web.sql and grants/ispyb_processing.sql, the
# same from 5.0.0 to now), for the tables relion_zo touches: (privilege, table) pairs.
ISPYB_WEB = {("SELECT", "*")} | {
    (privilege, table) for privilege, tables in {
        "INSERT": ("BLSession", "DataCollection", "DataCollectionGroup", "ProcessingJob",
                   "ProcessingJobParameter", "ProcessingJobImageSweep", "AdminVar"),
        "UPDATE": ("BLSession", "DataCollection", "DataCollectionGroup",
                   "ProcessingJobImageSweep", "AdminVar"),
    }.items() for table in tables}
ISPYB_PROCESSING = {("SELECT", "AdminVar"),
                    ("EXECUTE", "PROCEDURE upsert_processing_program_message")} | {
    (privilege, table) for privilege in ("SELECT", "INSERT", "UPDATE")
    for table in ("AutoProcProgram", "AutoProcProgramAttachment", "ProcessingJob",
                  "ProcessingJobParameter", "Movie", "MotionCorrection", "CTF",
                  "ParticlePicker", "ParticleClassificationGroup", "ParticleClassification",
                  "CryoemInitialModel", "ParticleClassification_has_CryoemInitialModel")}

GRANT = re.compile(r"GRANT\s+(?P<privs>.+?)\s+ON\s+(?P<what>(?:PROCEDURE\s+)?\S+)\s+TO\s+(?P<to>\S+)",
                   re.S | re.I)


def _grants(statements) -> set[tuple[str, str, str, frozenset]]:
    """(grantee, privilege, table, columns) of GRANT statements, from grants.sql or from
    SHOW GRANTS (backticks and the database name dropped)."""
    found = set()
    for statement in statements:
        match = GRANT.match(" ".join(statement.replace("`", "").split()))
        if not match or " ON " not in statement.upper() or "USAGE" in match["privs"]:
            continue
        what = match["what"].split(".")[-1]
        if match["what"].upper().startswith("PROCEDURE"):
            what = "PROCEDURE " + what.split()[-1].split(".")[-1]
        grantee = match["to"].split("@")[0].strip("'")
        for privilege, columns in re.findall(r"(\w+)\s*(?:\(([^)]*)\))?", match["privs"]):
            cols = frozenset(c.strip() for c in columns.split(",")) if columns else frozenset()
            found.add((grantee, privilege.upper(), what, cols))
    return found


def _grants_sql() -> list[str]:
    return stack.sql_statements((resources.files("relion_zo") / "sql" / "grants.sql").read_text())


def _extra_lines() -> list[str]:
    text_ = (resources.files("relion_zo") / "sql" / "grants.sql").read_text()
    after = text_.split("-- EXTRA", 1)[1].split("\n", 1)[1]  # from the line after the marker
    return stack.sql_statements(after)


@pytest.fixture
def site(tmp_path, stack_settings):
    """A run ends as soon as its movies are done (no waiting for more)."""
    return site_config(tmp_path, stack_settings, idle_seconds=0)


# ---------------------------------------------------------------- grants


def test_the_stacks_users_hold_exactly_the_grants_of_grants_sql(stack_settings):
    held = set()
    for role in stack.SIDE_USERS.values():
        held |= _grants(r[0] for r in stack.root_sql(stack_settings, f"SHOW GRANTS FOR {role}"))
        for host in ("localhost", "127.0.0.1"):
            user_rows = [r[0] for r in stack.root_sql(
                stack_settings, f"SHOW GRANTS FOR '{role}'@'{host}'")]
            # the user holds its role and nothing of its own
            assert _grants(user_rows) == set(), user_rows
            assert any(f"GRANT `{role}` TO" in r for r in user_rows), user_rows
    assert held == _grants(_grants_sql())


def test_the_web_side_is_within_ispyb_web():
    web = {g for g in _grants(_grants_sql()) if g[0] == "relion_zo_web"}
    assert web
    for _, privilege, table, _ in web:
        assert (privilege, table) in ISPYB_WEB or (privilege == "SELECT"
                                                   and ("SELECT", "*") in ISPYB_WEB), table


def test_the_processing_side_is_within_ispyb_processing_plus_named_extras():
    processing = {g for g in _grants(_grants_sql()) if g[0] == "relion_zo_processing"}
    extras = _grants(_extra_lines())
    assert {(p, t) for _, p, t, _ in extras} == {
        ("SELECT", "DataCollection"), ("SELECT", "BLSession"), ("SELECT", "Proposal")}
    assert all(columns for *_, columns in extras), "extras name their columns"
    for grant in processing:
        assert grant in extras or (grant[1], grant[2]) in ISPYB_PROCESSING, grant


def _scratch_user(stack_settings, leave_out: str = "\0", drop_column: str = "\0"
                  ) -> tuple[str, str]:
    """A user with the processing side's grants except the lines holding ``leave_out`` and
    the column ``drop_column``."""
    name = f"rz_t{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    hosts = ("localhost", "127.0.0.1")
    statements = [f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{password}'" for host in hosts]
    statements += [s.replace("TO relion_zo_processing", f"TO '{name}'@'{host}'")
                   .replace(f", {drop_column}", "")
                   for s in _grants_sql() if "relion_zo_processing" in s
                   and "CREATE ROLE" not in s and leave_out not in s for host in hosts]
    stack.root_sql(stack_settings, f"USE `{stack_settings.database}`", *statements)
    return name, password


def _drop_user(stack_settings, name: str) -> None:
    stack.root_sql(stack_settings, *(f"DROP USER IF EXISTS '{name}'@'{host}'"
                                     for host in ("localhost", "127.0.0.1")))


def _ini(path: Path, stack_settings, name: str, password: str) -> Path:
    path.write_text("[ispyb_sqlalchemy]\n"
                    f"username = {name}\npassword = {password}\nhost = 127.0.0.1\n"
                    f"port = {stack_settings.mariadb_port}\ndatabase = {stack_settings.database}\n")
    path.chmod(0o600)
    return path


def _cli(args, capsys) -> tuple[int, str, str]:
    code = cli(args)
    out, err = capsys.readouterr()
    return code, out, err


START_PARAMS = ["-p", "angpix=1.0", "-p", "voltage=300", "-p", "Cs=2.7",
                "-p", "motioncor_doseperframe=1.0", "-p", "stop_after_motion_correction=1"]


def test_every_command_runs_under_its_sides_user(engine, site, live_visits, tmp_path, capsys):
    """start, status, run, reprocess, stop, reap, restart and resume, each with the grants of its
    side only (the site file names one credentials file per side)."""
    live = live_visits(site)
    site_file = str(write_site_file(site, tmp_path / "site.yaml"))
    code, out, err = _cli(["start", "--config", site_file, "--visit", live.name,
                           "--image-directory", str(live.raw), "--file-template", "*.mrc",
                           "--no-send", "--json", *START_PARAMS], capsys)
    assert code == 0, err
    first = json.loads(out)["processing_job_id"]
    code, out, err = _cli(["run", "--config", site_file, str(first)], capsys)
    assert code == 0, err
    code, out, err = _cli(["status", "--config", site_file, str(first)], capsys)
    assert code == 0 and "success" in out, err
    code, out, err = _cli(["reprocess", "--config", site_file, "--no-send", str(first)], capsys)
    assert code == 0, err
    second = int(re.search(r"processing job (\d+) submitted", out).group(1))
    assert job_status(engine, site, second).state == "submitted"
    code, out, err = _cli(["stop", "--local", "--config", site_file, str(second)], capsys)
    assert code == 0 and "stop requested; a worker closes it" in out, (out, err)
    code, out, err = _cli(["reap", "--config", site_file], capsys)
    assert code == 0 and f"processing job {second}: asked to stop" in out, (out, err)
    assert job_status(engine, site, second).state == "stopped"
    dcid = job_status(engine, site, second).data_collection_id
    code, out, err = _cli(["restart", "--local", "--config", site_file, "--dcid", str(dcid)],
                          capsys)
    assert code == 0, err
    code, out, err = _cli(["resume", "--config", site_file, str(second)], capsys)
    assert code == 0, err
    assert job_status(engine, site, second).state == "success"


@pytest.mark.parametrize("command, side", [
    (["status", "1"], "web"),  # the processing side's command with the web side's user
    (["run", "1"], "web"),
    (["reap"], "web"),
    (["start", "--dcid", "1", "-p", "angpix=1"], "processing"),
    (["stop", "--local", "1"], "processing"),
])
def test_a_command_with_the_other_sides_user_is_refused_in_one_line(
        command, side, stack_settings, tmp_path, capsys):
    other = (stack_settings.web_credentials_path if side == "web"
             else stack_settings.processing_credentials_path)
    site = site_config(tmp_path, stack_settings, ispyb_credentials=other,
                       ispyb_web_credentials=other)
    site_file = str(write_site_file(site, tmp_path / "site.yaml"))
    code, out, err = _cli([command[0], "--config", site_file, *command[1:]], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "ISPyB schema 5.2.0: relion_zo's" in err and "docs/ispyb.md" in err, err


def test_a_refused_failure_message_never_hides_the_outcome(engine, stack_settings, live_visits,
                                                           tmp_path, capsys, caplog):
    """Without EXECUTE on ISPyB's message procedure the failure is still recorded, and ``run``
    reports it as the run's outcome, not as a database error."""
    name, password = _scratch_user(stack_settings, "upsert_processing_program_message")
    try:
        ini = _ini(tmp_path / "nomsg.ini", stack_settings, name, password)
        site = site_config(tmp_path, stack_settings, ispyb_credentials=ini)
        live = live_visits(site)
        pjid = live.start(motioncor_gainreference="gain.mrc")
        live.gain.unlink()  # gone between Start and the run
        site_file = str(write_site_file(site, tmp_path / "site.yaml"))
        code, out, err = _cli(["run", "--config", site_file, str(pjid)], capsys)
        assert code == 1 and "Traceback" not in err
        assert "Bad input" in out + err and "gain reference" in out + err, (out, err)
        assert "is missing or not granted" in err  # said before the run
        logged = caplog.text
        assert "message could not be written" in logged and "execute command denied" in logged
        state = job_status(engine, site, pjid)
        assert state.state == "failure" and state.message.startswith("Bad input:")
        (program,) = program_rows(engine, pjid)
        with Session(engine) as db:
            assert db.execute(select(AutoProcProgramMessage).where(
                AutoProcProgramMessage.autoProcProgramId == program.autoProcProgramId)
            ).first() is None
    finally:
        _drop_user(stack_settings, name)


def _lost_program(engine, pjid: int) -> int:
    """A program whose wrapper ran on another host an hour ago and stopped beating."""
    with Session(engine) as db, db.begin():
        return db.execute(insert(AutoProcProgram).values(
            processingJobId=pjid, processingPrograms="RELION", processingStartTime=text(
                "NOW() - INTERVAL 1 HOUR"), processingEndTime=text("NOW() - INTERVAL 1 HOUR"),
            processingEnvironment="host=elsewhere pid=1", recordTimeStamp=text("NOW()"),
        )).inserted_primary_key[0]


def test_reap_goes_on_past_a_job_it_cannot_close(engine, site, live_visits, tmp_path, capsys):
    blocked_visit, open_visit = live_visits(site), live_visits(site)
    blocked, closable = blocked_visit.start(), open_visit.start()
    blocked_program, _ = _lost_program(engine, blocked), _lost_program(engine, closable)
    trigger = f"rz_refuse_{blocked_program}"
    with engine.begin() as conn:  # the database refuses this one program's final status
        conn.execute(text(
            f"CREATE TRIGGER {trigger} BEFORE UPDATE ON AutoProcProgram FOR EACH ROW "
            f"IF OLD.autoProcProgramId = {blocked_program} AND NEW.processingStatus IS NOT NULL "
            "THEN SIGNAL SQLSTATE '42000' SET MYSQL_ERRNO = 1142, "
            "MESSAGE_TEXT = 'UPDATE command denied (test)'; END IF"))
    try:
        site_file = str(write_site_file(site, tmp_path / "site.yaml"))
        code, out, err = _cli(["reap", "--config", site_file], capsys)
        assert code == 0, err
        assert f"processing job {closable}: lost, recorded as failure" in out
        assert f"job {blocked}: could not close it" in err and "denied" in err
        assert job_status(engine, site, closable).message.startswith("Lost: no heartbeat since")
        assert job_status(engine, site, blocked).state == "lost"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))


# ---------------------------------------------------------------- latin1


def test_ispybs_tables_are_latin1_and_strict(engine):
    with engine.connect() as conn:
        collations = dict(conn.execute(text(
            "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE()")).all())
        assert collations and all(c.startswith("latin1") for c in collations.values())
        with pytest.raises(OperationalError, match="1366"):  # what production does with Ω
            conn.execute(text("INSERT INTO AdminVar (name, value) VALUES ('t', 'Ωmega')"))


UNSTORABLE = {"Greek": "Ωmega", "CJK": "数据", "emoji": "grid🙂"}


@pytest.mark.parametrize("script", UNSTORABLE)
@pytest.mark.parametrize("field", ["image directory", "comments", "parameter"])
def test_start_refuses_text_latin1_cannot_hold(script, field, engine, site, live_visits,
                                               tmp_path, capsys):
    live = live_visits(site)
    word = UNSTORABLE[script]
    folder = live.raw
    extra: list[str] = []
    if field == "image directory":
        folder = live.directory / f"raw_{word}"
        synthetic.write_movies(folder, 1, **live.movie)
    elif field == "comments":
        extra = ["--comments", f"grid {word}"]
    else:
        extra = ["-p", f"acquisition_software=EPU {word}"]
    site_file = str(write_site_file(site, tmp_path / "site.yaml"))
    with Session(engine) as db:
        before = row_counts(db)
    code, out, err = _cli(["start", "--config", site_file, "--visit", live.name,
                           "--image-directory", str(folder), "--file-template", "*.mrc",
                           "--no-send", *START_PARAMS, *extra], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    named = {"image directory": "image directory:", "comments": "comments:",
             "parameter": "parameter acquisition_software:"}[field]
    assert err.startswith(f"error: {named} contains") and "latin1" in err, err
    with Session(engine) as db:
        assert row_counts(db) == before


def test_messages_and_heartbeats_replace_what_latin1_cannot_hold(engine, processing_engine,
                                                                  site, live_visits):
    pjid = live_visits(site).start()
    manager = JobManager(processing_engine, site)
    program = manager.claim(pjid, command_line="relion-zo run Ωmega", environment="host=數據")
    assert manager.mark_running(program, "setting up 🙂", "host=數據 pid=1")
    assert not manager.beat(program, "MotionCorr 1/2 (movie raw_Ωmega)").must_end
    assert manager.finish(program, Outcome("failed", "MotionCorr: movie 数据 🙂 Ω is broken"))
    with Session(engine) as db:
        row = db.execute(select(AutoProcProgram.processingMessage,
                                AutoProcProgram.processingCommandLine).where(
            AutoProcProgram.autoProcProgramId == program)).one()
        notes = db.execute(select(AutoProcProgramMessage.severity, AutoProcProgramMessage.message)
                           .where(AutoProcProgramMessage.autoProcProgramId == program)).all()
    assert row.processingMessage == "Failed: MotionCorr: movie ?? ? ? is broken"
    assert row.processingCommandLine == "relion-zo run ?mega"
    assert notes == [("ERROR", "Failed: MotionCorr: movie ?? ? ? is broken")]


# ---------------------------------------------------------------- schema version


def test_a_5_0_0_schema_without_jobuuid_runs_a_job(engine, processing_engine, site,
                                                   live_visits):
    """ISPyB 5.0.0 has no AutoProcProgram.jobUuid: relion_zo never asks for it."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE AutoProcProgram DROP COLUMN jobUuid"))
    try:
        live = live_visits(site)
        pjid = live.start()
        assert run_job(pjid, engine=processing_engine, config=site).state == "success"
        assert job_status(engine, site, pjid).state == "success"
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE AutoProcProgram ADD COLUMN jobUuid VARCHAR(36)"))


def test_a_missing_column_or_grant_is_named(engine, stack_settings, tmp_path, capsys):
    name, password = _scratch_user(stack_settings, drop_column="fileTemplate")
    try:
        ini = _ini(tmp_path / "nocol.ini", stack_settings, name, password)
        site = site_config(tmp_path, stack_settings, ispyb_credentials=ini)
        site_file = str(write_site_file(site, tmp_path / "site.yaml"))
        code, out, err = _cli(["status", "--config", site_file, "1"], capsys)
        assert code == 1 and err.count("\n") == 1, err
        assert "relion_zo's processing side needs DataCollection.fileTemplate, which" in err, err
    finally:
        _drop_user(stack_settings, name)


def test_an_unknown_schema_version_is_warned_about(engine, site, tmp_path, capsys):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO AdminVar (name, value) VALUES ('schemaVersion', '4.13.0')"))
    try:
        site_file = str(write_site_file(site, tmp_path / "site.yaml"))
        code, out, err = _cli(["status", "--config", site_file, "--visit", "cm00001-1"],
                              capsys)
        assert code in (0, 1), err
        assert "ISPyB schema 4.13.0: relion_zo is known to work with 5.0.0" in err, err
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM AdminVar WHERE name = 'schemaVersion' "
                              "AND value = '4.13.0'"))
    assert schema.known("5.2.0") and schema.known("5.0.0") and not schema.known("4.13.0")


# ---------------------------------------------------------------- the jobs the web UIs write


PATO_STATES = (  # pato-backend ``_job_status_description``
    "CASE WHEN app.autoProcProgramId IS NULL THEN 'Submitted' "
    "WHEN app.processingStatus = 1 THEN 'Success' WHEN app.processingStatus = 0 THEN 'Fail' "
    "WHEN app.processingStartTime IS NOT NULL THEN 'Running' ELSE 'Queued' END")
SYNCHWEB_STATES = (  # SynchWeb's ``api/src/Page/EM/ProcessingJobs.php``, until 2024
    "CASE WHEN app.autoProcProgramId IS NULL THEN 'submitted' "
    "WHEN app.processingStartTime IS NULL AND app.processingStatus IS NULL THEN 'queued' "
    "WHEN app.processingStatus IS NULL THEN 'running' "
    "WHEN app.processingStatus = 0 THEN 'failure' "
    "WHEN app.processingStatus = 1 THEN 'success' ELSE '' END")


def ui_status(engine, pjid: int, states: str) -> str:
    """What a web UI's job list shows for the job's newest AutoProcProgram."""
    with engine.connect() as conn:
        return conn.execute(text(
            f"SELECT {states} FROM ProcessingJob pj LEFT JOIN AutoProcProgram app "
            "ON app.processingJobId = pj.processingJobId WHERE pj.processingJobId = :j "
            "ORDER BY app.autoProcProgramId DESC LIMIT 1"), {"j": pjid}).scalar()


def pato_status(engine, pjid: int) -> str:
    return ui_status(engine, pjid, PATO_STATES)


def synchweb_status(engine, pjid: int) -> str:
    return ui_status(engine, pjid, SYNCHWEB_STATES)


def acquired(engine, live, *, suffix: str, template: str, grid: bool,
             movies: int = 2) -> tuple[int, str]:
    """A data collection as the microscope's acquisition writes it (administrator), and its
    raw folder: ``movies`` synthetic movies in ``GridSquare_1/Data`` (EPU's layout), or those
    already directly in it."""
    folder = live.raw / "GridSquare_1" / "Data" if grid else live.raw
    if grid and movies:
        synthetic.write_movies(folder, movies, **live.movie)
    with Session(engine) as db, db.begin():
        group = db.execute(insert(DataCollectionGroup).values(
            sessionId=live.session_id, experimentType="EM")).inserted_primary_key[0]
        dcid = db.execute(insert(DataCollection).values(
            dataCollectionGroupId=group, SESSIONID=live.session_id,
            imageDirectory=str(live.raw), fileTemplate=template, imageSuffix=suffix,
        )).inserted_primary_key[0]
    return dcid, str(live.raw)


def write_ui_job(web_engine, dcid: int, comments: str, rows: list[tuple[str, str]]) -> int:
    """ProcessingJob and its parameters as PATo and SynchWeb write them (no image sweep), with
    the web side's grants."""
    with Session(web_engine) as db, db.begin():
        pjid = db.execute(insert(ProcessingJob).values(
            dataCollectionId=dcid, displayName="RELION", comments=comments, recipe="relion",
            automatic=0)).inserted_primary_key[0]
        db.execute(insert(ProcessingJobParameter), [
            {"processingJobId": pjid, "parameterKey": k, "parameterValue": v} for k, v in rows])
    return pjid


def publish_like_pato(stack_settings, body: dict) -> None:
    """pato-backend's ``src/pato/utils/pika.py``: the default exchange, persistent, JSON, no
    headers."""
    config = json.loads(json.dumps(__import__("yaml").safe_load(
        stack_settings.zocalo_config_path.read_text())))
    mq = next(v for v in config.values() if isinstance(v, dict) and "username" in v)
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host=mq.get("host", "127.0.0.1"), port=int(mq["port"]),
        virtual_host=mq.get("vhost", "/"),
        credentials=pika.PlainCredentials(mq["username"], mq["password"])))
    try:
        connection.channel().basic_publish(
            exchange="", routing_key=broker.PROCESSING_RECIPE, body=json.dumps(body),
            properties=pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def wait_final(engine, site, pjid: int) -> object:
    deadline = time.monotonic() + LIMIT
    while (state := job_status(engine, site, pjid)).state not in ("success", "failure",
                                                                  "stopped"):
        assert time.monotonic() < deadline, f"job {pjid} still {state.state}"
        time.sleep(0.2)
    return state


@pytest.fixture
def ui_site(tmp_path, stack_settings, services):
    site = site_config(tmp_path, stack_settings, idle_seconds=0)
    services.site_file = write_site_file(site, tmp_path / "site-ui.yaml")
    services.dispatcher()
    services.worker()
    return site


def _error_notes(engine, pjid: int) -> list[str]:
    with Session(engine) as db:
        return list(db.execute(
            select(AutoProcProgramMessage.message).join(
                AutoProcProgram, AutoProcProgram.autoProcProgramId
                == AutoProcProgramMessage.autoProcProgramId)
            .where(AutoProcProgram.processingJobId == pjid,
                   AutoProcProgramMessage.severity == "ERROR")).scalars())


def test_patos_default_job_fails_naming_ctffind_where_the_site_has_none(
        engine, web_engine, stack_settings, ui_site, live_visits):
    """PATo's default job asks for relion_it's whole pipeline: on a site whose file names no
    CTFFIND it fails before anything runs, naming the setting (tests/test_pipeline.py runs the
    same job to success on a site that names one)."""
    live = live_visits(ui_site)
    dcid, raw = acquired(engine, live, suffix="mrc", template="GridSquare_1/Data/*.mrc",
                         grid=True)
    # PATo's glob <imageDirectory>/GridSquare*/Data/*<imageSuffix>, the suffix without its dot
    pjid = write_ui_job(web_engine, dcid, "Submitted via PATo",
                        pato_rows(raw, "mrc", str(live.gain), stop_after_ctf=False))
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    state = wait_final(engine, ui_site, pjid)
    assert state.state == "failure" and pato_status(engine, pjid) == "Fail"
    assert "executables.ctffind" in state.message, state.message
    assert any("executables.ctffind" in note for note in _error_notes(engine, pjid))
    assert not live.project(pjid).exists()


def test_patos_stop_after_ctf_job_runs_to_success(engine, web_engine, stack_settings, services,
                                                   tmp_path, live_visits):
    """PATo's job with "Stop after CTF estimation", its nine rows exactly, on a site whose
    ctffind is relion-zo-ctffind-aspire: Import, MotionCorr and CtfFind, shown as Success."""
    import shutil

    site = site_config(tmp_path, stack_settings, idle_seconds=0, executables={
        "relion_pipeliner": "relion_pipeliner",
        "ctffind": shutil.which("relion-zo-ctffind-aspire")},
        relion_it_defaults=TEST_MACHINE)
    services.site_file = write_site_file(site, tmp_path / "site-ctf.yaml")
    services.dispatcher()
    services.worker()
    live = live_visits(site, size=1024)  # big enough for RELION's 512-pixel power spectra
    dcid, raw = acquired(engine, live, suffix="mrc", template="GridSquare_1/Data/*.mrc",
                         grid=True)
    rows = pato_rows(raw, "mrc", str(live.gain), stop_after_ctf=True)
    pjid = write_ui_job(web_engine, dcid, "Submitted via PATo", rows)
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    state = wait_final(engine, site, pjid)
    assert state.state == "success", state.message
    assert state.message == "Import 2, MotionCorr 2/2, CtfFind 2/2"
    assert pato_status(engine, pjid) == "Success"


def test_a_pato_shaped_job_runs_to_success_within_the_stages_relion_zo_runs(
        engine, web_engine, stack_settings, ui_site, live_visits):
    """PATo's rows (its glob, 1/0 booleans, an absolute gain path, no image sweep) plus the one
    key that ends at motion correction; PATo's message; PATo's list shows Success."""
    live = live_visits(ui_site)
    dcid, raw = acquired(engine, live, suffix="mrc", template="GridSquare_1/Data/*.mrc",
                         grid=True)
    rows = pato_rows(raw, "mrc", str(live.gain), stop_after_ctf=True)
    pjid = write_ui_job(web_engine, dcid, "Submitted via PATo",
                        rows + [("stop_after_motion_correction", "1")])
    assert pato_status(engine, pjid) == "Submitted"
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    state = wait_final(engine, ui_site, pjid)
    assert state.state == "success", state.message
    assert pato_status(engine, pjid) == "Success" and state.message.startswith("Import 2,")
    with Session(engine) as db:  # the rows PATo wrote are as it wrote them
        stored = db.execute(select(ProcessingJobParameter.parameterKey,
                                   ProcessingJobParameter.parameterValue)
                            .where(ProcessingJobParameter.processingJobId == pjid)).all()
    assert stored == rows + [("stop_after_motion_correction", "1")]


def test_synchwebs_default_job_fails_naming_ctffind_where_the_site_has_none(
        engine, web_engine, stack_settings, ui_site, live_visits):
    live = live_visits(ui_site)
    dcid, raw = acquired(engine, live, suffix=".mrc", template="*.mrc", grid=False)
    pjid = write_ui_job(web_engine, dcid, "Submitted via SynchWeb",
                        synchweb_rows(raw, "*.mrc", str(live.gain)))
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    state = wait_final(engine, ui_site, pjid)
    assert state.state == "failure" and synchweb_status(engine, pjid) == "failure"
    assert "executables.ctffind" in state.message, state.message


def test_synchwebs_stop_message_stops_a_running_job(engine, web_engine, stack_settings,
                                                    services, tmp_path, live_visits):
    """SynchWeb's Stop: ``relion-stop`` with the job id as a string. ISPyB has no stopped
    status: SynchWeb's list shows the stop as success (docs/web-uis.md)."""
    site = site_config(tmp_path, stack_settings, idle_seconds=600)
    services.site_file = write_site_file(site, tmp_path / "site-long.yaml")
    services.dispatcher()
    services.worker()
    live = live_visits(site)
    dcid, raw = acquired(engine, live, suffix=".mrc", template="*.mrc", grid=False)
    rows = [(k, v) for k, v in synchweb_rows(raw, "*.mrc", str(live.gain))
            if k != "stop_after_ctf_estimation"]
    pjid = write_ui_job(web_engine, dcid, "Submitted via SynchWeb", rows + [
        ("stop_after_ctf_estimation", "1"), ("stop_after_motion_correction", "1")])
    publish_like_pato(stack_settings, {"parameters": {"ispyb_process": pjid}})
    deadline = time.monotonic() + LIMIT
    while job_status(engine, site, pjid).message in (None, "setting up") or (
            job_status(engine, site, pjid).state != "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert synchweb_status(engine, pjid) == "running"
    publish_like_pato(stack_settings, {"recipes": ["relion-stop"],
                                       "parameters": {"ispyb_process": str(pjid)}})
    state = wait_final(engine, site, pjid)
    assert state.state == "stopped" and synchweb_status(engine, pjid) == "success"
    assert pato_status(engine, pjid) == "Success"
