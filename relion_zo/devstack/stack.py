"""The local stack: MariaDB, RabbitMQ and a one-node Slurm from Debian's packages, run as the
current user's processes in a private folder, bound to loopback, for the demo and the tests.

``up`` is idempotent: it starts what is not running, waits until each server answers, creates
the ISPyB database, its user and its tables (from the ``ispyb`` package's ORM models) once, and
writes the credentials files. ISPyB's tables are latin1, as ISPyB's own schema declares them, and
MariaDB has three users: an administrator (the stack itself, the demo's seeding, the tests'
observers) and one user per side of relion_zo holding only its role from
``relion_zo/sql/grants.sql`` (``ispyb-web.ini``, ``ispyb-processing.ini``). RabbitMQ has one user,
relion_zo's (its ``guest`` administrator is deleted). Slurm is munged, slurmctld and slurmd with
every file in ``slurm/`` (``slurm_environment`` is what a client needs). ``down`` stops them all
by pid and leaves nothing running. A facility points its site file at its real servers instead
and never calls this module.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from relion_zo.errors import RelionZoError

log = logging.getLogger(__name__)

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/lib/erlang/bin/epmd"
DB_USER = "relion_zo"
SIDE_USERS = {"web": "relion_zo_web", "processing": "relion_zo_processing"}  # user = its role
SCHEMA_MARK = "latin1, roles 1\n"  # what schema.done holds; another text means build it again
MQ_USER = "relion_zo"
START_TIMEOUT = 90.0
CONSUMER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
SLURM_CLUSTER = "relionzo"
SLURM_PARTITION = "relion"
SLURM_KILL_WAIT = 10  # seconds between a cancelled job's SIGTERM and its SIGKILL


class StackError(RelionZoError):
    """A local server would not start or stop."""


@dataclass(frozen=True)
class StackSettings:
    root: Path
    mariadb_port: int = 33061
    rabbitmq_port: int = 56721
    epmd_port: int = 43691
    dist_port: int = 46721
    slurmctld_port: int = 16817
    slurmd_port: int = 16818
    database: str = "ispyb"
    node: str = field(default="relion_zo@localhost")

    @classmethod
    def from_env(cls, root: Path | None = None) -> StackSettings:
        env = os.environ
        return cls(
            root=Path(root or env.get("RELION_ZO_STACK") or ".stack").absolute(),
            mariadb_port=int(env.get("RELION_ZO_MARIADB_PORT", 33061)),
            rabbitmq_port=int(env.get("RELION_ZO_RABBITMQ_PORT", 56721)),
            epmd_port=int(env.get("RELION_ZO_EPMD_PORT", 43691)),
            dist_port=int(env.get("RELION_ZO_RABBITMQ_DIST_PORT", 46721)),
            slurmctld_port=int(env.get("RELION_ZO_SLURMCTLD_PORT", 16817)),
            slurmd_port=int(env.get("RELION_ZO_SLURMD_PORT", 16818)),
        )

    @property
    def credentials_path(self) -> Path:
        """The administrator's credentials: not for relion_zo's commands."""
        return self.root / "ispyb.ini"

    @property
    def web_credentials_path(self) -> Path:
        return self.root / "ispyb-web.ini"

    @property
    def processing_credentials_path(self) -> Path:
        return self.root / "ispyb-processing.ini"

    @property
    def zocalo_config_path(self) -> Path:
        return self.root / "zocalo.yaml"

    @property
    def mariadb_dir(self) -> Path:
        return self.root / "mariadb"

    @property
    def rabbitmq_dir(self) -> Path:
        return self.root / "rabbitmq"

    @property
    def socket(self) -> Path:
        return self.mariadb_dir / "mysqld.sock"

    @property
    def secrets_path(self) -> Path:
        return self.root / "secrets.json"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def slurm_conf_path(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.slurm_dir / "munge" / "munge.socket"

    @property
    def slurm_node(self) -> str:
        """The node's name: per stack (from its slurmd port), so two stacks' jobs never mix."""
        return f"zo{self.slurmd_port}"


# ---------------------------------------------------------------- process helpers


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _alive(pid: int | None, needle: str) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and needle in cmdline


def _stop_pid(pid: int | None, needle: str, timeout: float = 30.0) -> None:
    if not _alive(pid, needle):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, needle):
            return
        time.sleep(0.2)
    log.warning("pid %s (%s) ignored SIGTERM; killing it", pid, needle)
    os.kill(pid, signal.SIGKILL)


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return f"{path} is missing"


def _secrets(settings: StackSettings) -> dict[str, str]:
    """Passwords made once per stack folder and kept (mode 0600) so ``up`` twice is stable."""
    path = settings.secrets_path
    if path.exists():
        return json.loads(path.read_text())
    values = {"mariadb": secrets.token_urlsafe(18), "rabbitmq": secrets.token_urlsafe(18)}
    return _save_secrets(settings, values)


def _save_secrets(settings: StackSettings, values: dict[str, str]) -> dict[str, str]:
    settings.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


def _side_password(settings: StackSettings, side: str) -> str:
    values = _secrets(settings)
    if side not in values:  # a stack made before the side users existed
        values[side] = secrets.token_urlsafe(18)
        _save_secrets(settings, values)
    return values[side]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


# ---------------------------------------------------------------- MariaDB


def _mariadb_pid(settings: StackSettings) -> int | None:
    return _read_pid(settings.mariadb_dir / "mariadbd.pid")


def _mariadb_running(settings: StackSettings) -> bool:
    return _alive(_mariadb_pid(settings), "mariadbd")


def _start_mariadb(settings: StackSettings) -> None:
    folder = settings.mariadb_dir
    data = folder / "data"
    user = getpass.getuser()
    if not (data / "mysql").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--user={user}",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"mariadb-install-db failed: {result.stderr.strip()[-400:]}")
    error_log = folder / "error.log"
    with open(folder / "stdout.log", "ab") as out:
        server = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={settings.socket}",
             f"--port={settings.mariadb_port}", "--bind-address=127.0.0.1",
             f"--pid-file={folder / 'mariadbd.pid'}", f"--log-error={error_log}",
             f"--user={user}", "--skip-name-resolve", "--innodb-buffer-pool-size=256M",
             "--max-connections=300", "--character-set-server=utf8mb4"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        if settings.socket.exists() and _mariadb_running(settings):
            try:
                _root_sql(settings, "SELECT 1")
                return
            except StackError:
                pass
        time.sleep(0.2)
    raise StackError(f"MariaDB did not start (exit {server.poll()}) within {START_TIMEOUT:.0f} s: {_log_tail(error_log)}")


def _root_sql(settings: StackSettings, *statements: str) -> list[tuple]:
    """Statements as MariaDB's root (its socket); the rows of the last one."""
    import MySQLdb  # mysqlclient; imported here so nothing connects or loads at import time

    try:
        conn = MySQLdb.connect(unix_socket=str(settings.socket), user="root")
    except MySQLdb.Error as exc:
        raise StackError(f"cannot connect to the local MariaDB as root: {exc}") from None
    rows: list[tuple] = []
    try:
        cursor = conn.cursor()
        for statement in statements:
            cursor.execute(statement)
            rows = list(cursor.fetchall() or ())
        conn.commit()
    finally:
        conn.close()
    return rows


def root_sql(settings: StackSettings, *statements: str) -> list[tuple]:
    """For tests that manage users and grants: the local MariaDB's root, over its socket."""
    return _root_sql(settings, *statements)


def _ini(settings: StackSettings, user: str, password: str) -> str:
    return ("[ispyb_sqlalchemy]\n"
            f"username = {user}\npassword = {password}\nhost = 127.0.0.1\n"
            f"port = {settings.mariadb_port}\ndatabase = {settings.database}\n")


def _users(user: str, quoted_password: str) -> list[str]:
    statements = []
    for host in ("localhost", "127.0.0.1"):
        statements += [
            f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY {quoted_password}",
            f"ALTER USER '{user}'@'{host}' IDENTIFIED BY {quoted_password}",
        ]
    return statements


def _prepare_database(settings: StackSettings, password: str) -> None:
    """A fresh latin1 database (an older stack's is dropped) and the administrator."""
    import MySQLdb

    db, user = settings.database, DB_USER
    quoted = MySQLdb.string_literal(password.encode()).decode()
    statements = [f"DROP DATABASE IF EXISTS `{db}`",
                  f"CREATE DATABASE `{db}` CHARACTER SET latin1 COLLATE latin1_swedish_ci"]
    statements += _users(user, quoted)
    statements += [f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'{host}'"
                   for host in ("localhost", "127.0.0.1")]
    _root_sql(settings, *statements)
    _write_private(settings.credentials_path, _ini(settings, user, password))


def sql_statements(text: str) -> list[str]:
    """The statements of a plain SQL file (``--`` comments, ``;`` at line ends)."""
    lines = [line.split("--", 1)[0].rstrip() for line in text.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _prepare_side_users(settings: StackSettings) -> None:
    """relion_zo's roles exactly as ``relion_zo/sql/grants.sql`` has them, and one user per side
    holding only its role."""
    from importlib import resources

    import MySQLdb

    grants = sql_statements((resources.files("relion_zo") / "sql" / "grants.sql").read_text())
    # Dropped first, so a grant taken out of grants.sql is gone here too.
    statements = [f"USE `{settings.database}`", *(f"DROP ROLE IF EXISTS {role}"
                                                   for role in SIDE_USERS.values()), *grants]
    for side, user in SIDE_USERS.items():
        password = _side_password(settings, side)
        quoted = MySQLdb.string_literal(password.encode()).decode()
        statements += _users(user, quoted)
        for host in ("localhost", "127.0.0.1"):
            statements += [f"GRANT {user} TO '{user}'@'{host}'",
                           f"SET DEFAULT ROLE {user} FOR '{user}'@'{host}'"]
    _root_sql(settings, *statements)
    for side, user in SIDE_USERS.items():
        path = (settings.web_credentials_path if side == "web"
                else settings.processing_credentials_path)
        _write_private(path, _ini(settings, user, _side_password(settings, side)))


def create_schema(engine) -> None:
    """ISPyB's tables from the ``ispyb`` package's ORM models, in latin1 as ISPyB declares them
    (the ORM alone would take the server's default), ISPyB's procedure for program messages
    (``routines.sql``: relion_zo's own text with ISPyB's name, parameters and effect) and
    ``AdminVar.schemaVersion``."""
    from importlib import resources

    from ispyb.sqlalchemy import AdminVar, Base, __schema_version__
    from sqlalchemy import insert, select
    from sqlalchemy.orm import Session

    for table in Base.metadata.sorted_tables:
        table.kwargs.setdefault("mysql_charset", "latin1")
    Base.metadata.create_all(engine)
    routines = (resources.files("relion_zo.devstack") / "routines.sql").read_text()
    with engine.begin() as conn:
        for statement in routines.split("\n$$\n"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    with Session(engine) as db:
        known = db.execute(select(AdminVar.value).where(AdminVar.name == "schemaVersion")).first()
        if known is None:
            db.execute(insert(AdminVar).values(name="schemaVersion", value=__schema_version__))
            db.commit()


def _schema_ready(settings: StackSettings) -> bool:
    mark = settings.mariadb_dir / "schema.done"
    return mark.exists() and mark.read_text() == SCHEMA_MARK


# ---------------------------------------------------------------- RabbitMQ


def _rabbit_env(settings: StackSettings) -> dict[str, str]:
    home = settings.rabbitmq_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update(
        HOME=str(home),
        RABBITMQ_HOME="/usr/lib/rabbitmq/lib/rabbitmq_server-" + _rabbit_version(),
        RABBITMQ_MNESIA_BASE=str(home / "mnesia"),
        RABBITMQ_LOG_BASE=str(home / "log"),
        RABBITMQ_PID_FILE=str(home / "rabbitmq.pid"),
        RABBITMQ_NODENAME=settings.node,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(settings.rabbitmq_port),
        RABBITMQ_DIST_PORT=str(settings.dist_port),
        ERL_EPMD_PORT=str(settings.epmd_port),
        ERL_EPMD_ADDRESS="127.0.0.1",
        RABBITMQ_CONFIG_FILE=str(home / "rabbitmq"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(home / "enabled_plugins"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(home / "advanced.config"),
        RABBITMQ_CONF_ENV_FILE=str(home / "rabbitmq-env.conf"),
    )
    return env


def _rabbit_version() -> str:
    versions = sorted(p.name for p in Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))
    if not versions:
        raise StackError("rabbitmq-server is not installed (run scripts/install-deps.sh)")
    return versions[-1].split("-", 1)[1]


def _rabbit_pid(settings: StackSettings) -> int | None:
    return _read_pid(settings.rabbitmq_dir / "rabbitmq.pid")


def _rabbit_running(settings: StackSettings) -> bool:
    return _alive(_rabbit_pid(settings), "beam")


def _ctl(settings: StackSettings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RABBITMQCTL, "-n", settings.node, *args],
        env=_rabbit_env(settings), capture_output=True, text=True, timeout=timeout,
    )


def _start_rabbitmq(settings: StackSettings, password: str) -> None:
    home = settings.rabbitmq_dir
    (home / "log").mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        _write_private(cookie, secrets.token_hex(20))
        cookie.chmod(0o400)
    (home / "enabled_plugins").write_text("[].\n")
    # RabbitMQ's guest user is deleted once the server is up (``_remove_guest``); nothing here
    # widens where users may connect from (no ``loopback_users = none``).
    (home / "rabbitmq.conf").write_text(
        "listeners.tcp.default = 127.0.0.1:%d\n"
        # A worker holds a run's message unacknowledged until the run ends (prefetch is its
        # limit on concurrent jobs); RELION sessions last hours, RabbitMQ's default is 30 min.
        "consumer_timeout = %d\n" % (settings.rabbitmq_port, CONSUMER_TIMEOUT_MS)
    )
    (home / "advanced.config").write_text("[].\n")
    (home / "rabbitmq-env.conf").write_text("")
    env = _rabbit_env(settings)
    with open(home / "log" / "stdout.log", "ab") as out:
        server = subprocess.Popen(
            [RABBITMQ_SERVER], env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        try:
            result = _ctl(settings, "await_startup", "--timeout", "5", timeout=15)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode == 0 and _rabbit_running(settings):
            break
        time.sleep(0.5)
    else:
        raise StackError(
            f"RabbitMQ did not start (exit {server.poll()}) within {START_TIMEOUT:.0f} s: "
            f"{_log_tail(home / 'log' / 'stdout.log')}"
        )
    users = _ctl(settings, "list_users", "--quiet").stdout.split()
    if MQ_USER not in users:
        _check(_ctl(settings, "add_user", MQ_USER, password), "add_user")
    else:
        _check(_ctl(settings, "change_password", MQ_USER, password), "change_password")
    _check(_ctl(settings, "set_permissions", "-p", "/", MQ_USER, ".*", ".*", ".*"), "permissions")
    _remove_guest(settings)


def _remove_guest(settings: StackSettings) -> None:
    """Delete RabbitMQ's default administrator ``guest`` (idempotent): otherwise any local
    user could publish to or purge every queue with the well-known password."""
    result = _ctl(settings, "delete_user", "guest")
    if result.returncode != 0 and "does not exist" not in result.stderr + result.stdout:
        _check(result, "delete_user guest")


def _has_guest(settings: StackSettings) -> bool:
    return "guest" in _ctl(settings, "list_users", "--quiet").stdout.split()


def queue_counts(settings: StackSettings) -> dict[str, tuple[int, int]]:
    """Each queue's (ready, unacknowledged) message counts, from rabbitmqctl."""
    result = _ctl(settings, "list_queues", "name", "messages_ready", "messages_unacknowledged",
                  "--quiet", "--no-table-headers")
    _check(result, "list_queues")
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            counts[parts[0]] = (int(parts[1]), int(parts[2]))
    return counts


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise StackError(f"rabbitmqctl {what} failed: {result.stderr.strip() or result.stdout}")


def _write_zocalo_config(settings: StackSettings, password: str) -> None:
    from relion_zo.dispatcher import packaged_recipe_directory

    config = {
        "version": 1,
        "rabbitmq": {
            "plugin": "pika",
            "host": "127.0.0.1",
            "port": settings.rabbitmq_port,
            "username": MQ_USER,
            "password": password,
            "vhost": "/",
        },
        # The recipes shipped in the installed package ("relion", "relion-stop").
        "storage": {"plugin": "storage",
                    "zocalo.recipe_directory": str(packaged_recipe_directory())},
        # "default" is what zocalo's commands (zocalo.go, zocalo.wrap, zocalo.service) activate
        # when no -e is given; "local" names the same thing explicitly.
        "environments": {
            "default": {"plugins": ["rabbitmq", "storage"]},
            "local": {"plugins": ["rabbitmq", "storage"]},
        },
    }
    _write_private(settings.zocalo_config_path, yaml.safe_dump(config, sort_keys=False))


def _stop_epmd(settings: StackSettings) -> None:
    env = _rabbit_env(settings)
    if shutil.which(EPMD) or Path(EPMD).exists():
        subprocess.run([EPMD, "-kill"], env=env, capture_output=True, timeout=10)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if "epmd" in cmd and f"ERL_EPMD_PORT={settings.epmd_port}".encode() in environ:
            _stop_pid(int(proc.name), "epmd", timeout=5)


# ---------------------------------------------------------------- Slurm

SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")  # in the order they start
# A node in any of these states takes no job; the first word of its state is IDLE, MIXED or
# ALLOCATED when it does.
NODE_UNUSABLE = {"DRAIN", "NOT_RESPONDING", "FAIL", "POWERED_DOWN", "POWERING_DOWN",
                 "POWER_DOWN", "REBOOT_REQUESTED", "REBOOT_ISSUED", "MAINTENANCE", "INVALID_REG"}
UNFINISHED_JOBS = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,SIGNALING"


def slurm_environment(settings: StackSettings) -> dict[str, str]:
    """What a Slurm client (``sbatch``, ``squeue``, ``scancel``, ``scontrol``) needs in its
    environment to use this stack's Slurm: its ``slurm.conf`` names the controller's address and
    port, and the munge socket (``AuthInfo``)."""
    return {"SLURM_CONF": str(settings.slurm_conf_path)}


def _slurm_env(settings: StackSettings) -> dict[str, str]:
    """The daemons' and the stack's own clients' environment: this one's, without any other
    Slurm's variables (a shell inside another cluster's job), plus ``slurm_environment``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(slurm_environment(settings))
    return env


def _program(name: str) -> str:
    """A Slurm or munge program: Debian puts the daemons in /usr/sbin, which a user's PATH may
    lack."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if not found:
        raise StackError(f"{name} is not installed (run scripts/install-deps.sh)")
    return found


def _slurm_pid_file(settings: StackSettings, name: str) -> Path:
    return settings.slurm_dir / "run" / f"{name}.pid"


def _slurm_needle(settings: StackSettings, name: str) -> str:
    """What the daemon's command line holds: the socket or the slurm.conf of *this* stack."""
    if name == "munged":
        return f"--socket={settings.munge_socket}"
    return f"{name} -D -f {settings.slurm_conf_path}"


def _slurm_pid(settings: StackSettings, name: str) -> int | None:
    return _read_pid(_slurm_pid_file(settings, name))


def _slurm_running(settings: StackSettings, name: str) -> bool:
    return _alive(_slurm_pid(settings, name), _slurm_needle(settings, name))


def _slurm_client(settings: StackSettings, *args: str, timeout: float = 30
                  ) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=_slurm_env(settings), cwd=settings.slurm_dir,
                          capture_output=True, text=True, timeout=timeout)


def _node_hardware() -> str:
    """This machine as slurmd counts it (``slurmd -C``): CPUs, their layout and RealMemory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    result = subprocess.run([_program("slurmd"), "-C"], env=env, capture_output=True, text=True,
                            timeout=30)
    lines = [line for line in result.stdout.splitlines() if line.startswith("NodeName=")]
    if result.returncode != 0 or not lines:
        raise StackError(f"slurmd -C failed: {(result.stderr or result.stdout).strip()[-400:]}")
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(part for part in lines[0].split() if part.split("=", 1)[0] in keys)


def _slurm_conf(settings: StackSettings, hardware: str) -> str:
    folder, user, node = settings.slurm_dir, getpass.getuser(), settings.slurm_node
    mail = shutil.which("true")
    lines = [
        "# The local stack's one-node Slurm, written by `relion-zo stack up`: every file it uses",
        "# is in this folder. Clients: SLURM_CONF=<this file>.",
        f"ClusterName={SLURM_CLUSTER}",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={settings.slurmctld_port}",
        f"SlurmdPort={settings.slurmd_port}",
        "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",  # listen on 127.0.0.1 only
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={settings.munge_socket}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={_slurm_pid_file(settings, 'slurmctld')}",
        f"SlurmdPidFile={_slurm_pid_file(settings, 'slurmd')}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",  # slurmstepd's too
        # No cgroups needed: linuxproc follows the tree of parent pids from the batch script;
        # the Epilog kills what left that tree (relion_zo/devstack/slurm_epilog.py).
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        f"Epilog={folder / 'epilog'}",
        f"KillWait={SLURM_KILL_WAIT}",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # A job starts when it is submitted: by default Slurm may hold batch jobs back for 3 s
        # after its last scheduling pass.
        "SchedulerParameters=batch_sched_delay=0",
        # A finished job stays in squeue -t all and scontrol show job for 5 minutes: its final
        # state without accounting.
        "MinJobAge=300",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",  # the node is what this file says, never drained
        *([f"MailProg={mail}"] if mail else []),  # no mail is sent
        f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname=localhost Port={settings.slurmd_port}"
        f" {hardware} State=UNKNOWN",
        f"PartitionName={SLURM_PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _check_slurm_folder(settings: StackSettings) -> None:
    folder = str(settings.slurm_dir)
    if any(c.isspace() or c in "#,=\"'" for c in folder):
        raise StackError(f"the stack folder {folder!r} cannot be written in slurm.conf: "
                         "choose one without spaces, quotes, '#', ',' or '='")
    if len(str(settings.munge_socket).encode()) >= 100:  # a Unix socket's path: 108 bytes
        raise StackError(f"the stack folder {folder!r} is too long for munge's socket path")


def _prepare_slurm_folder(settings: StackSettings, conf: str) -> None:
    from importlib import resources

    folder = settings.slurm_dir
    for name in ("run", "log", "state", "spool", "munge"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o755)  # munged wants its socket's folder open to all, not writable
    key = folder / "munge" / "munge.key"
    if not key.exists():
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(1024))
    epilog = (resources.files("relion_zo.devstack") / "slurm_epilog.py").read_text()
    # slurmd runs the Epilog with only Slurm's variables (no PATH): the interpreter by its path.
    _replace(folder / "epilog", f"#!{sys.executable} -I\n{epilog}", 0o755)
    _replace(settings.slurm_conf_path, conf, 0o644)


def _replace(path: Path, text: str, mode: int) -> None:
    """Written beside, then renamed: a running daemon or Epilog never sees half a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.chmod(mode)
    part.replace(path)


def _await(settings: StackSettings, name: str, server: subprocess.Popen,
           problem: Callable[[], str | None]) -> None:
    """Until ``problem()`` is None; a clear error with the daemon's output if it never is."""
    deadline = time.monotonic() + START_TIMEOUT
    what = "not running"
    while time.monotonic() < deadline and server.poll() is None:
        what = "not running" if not _slurm_running(settings, name) else problem()
        if what is None:
            return
        time.sleep(0.1)
    output = settings.slurm_dir / "log" / f"{name}.out"
    raise StackError(f"{name} did not start (exit {server.poll()}, {what}) within "
                     f"{START_TIMEOUT:.0f} s: {_log_tail(output)}")


def _launch(settings: StackSettings, name: str, *args: str) -> subprocess.Popen:
    """A daemon in the foreground in a session of its own; its output in ``log/<name>.out``."""
    with open(settings.slurm_dir / "log" / f"{name}.out", "ab") as out:
        return subprocess.Popen(
            [_program(name), *args], env=_slurm_env(settings), cwd=settings.slurm_dir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start_munged(settings: StackSettings) -> None:
    socket = settings.munge_socket
    server = _launch(settings, "munged", "--foreground", "--force", f"--socket={socket}",
                     f"--key-file={socket.parent / 'munge.key'}",
                     f"--seed-file={socket.parent / 'munged.seed'}",
                     f"--pid-file={_slurm_pid_file(settings, 'munged')}")
    _await(settings, "munged", server, lambda: _munge_problem(settings))


def _munge_problem(settings: StackSettings) -> str | None:
    """None once munged makes a credential on its socket (a killed munged's socket file may
    still be there before the new one listens)."""
    result = subprocess.run([_program("munge"), f"--socket={settings.munge_socket}",
                             "--no-input"], env=_slurm_env(settings), capture_output=True,
                            timeout=10)
    return None if result.returncode == 0 else "no credential from its socket yet"


def _controller_problem(settings: StackSettings) -> str | None:
    result = _slurm_client(settings, "scontrol", "ping")
    return None if result.returncode == 0 and " is UP" in result.stdout else "no answer to ping"


def _start_slurmctld(settings: StackSettings) -> None:
    server = _launch(settings, "slurmctld", "-D", "-f", str(settings.slurm_conf_path))
    _await(settings, "slurmctld", server, lambda: _controller_problem(settings))


def _node(settings: StackSettings) -> dict[str, str]:
    """The node's State, Reason and SlurmdStartTime from ``scontrol show node``."""
    result = _slurm_client(settings, "scontrol", "show", "node", "--oneliner", settings.slurm_node)
    if result.returncode != 0:
        return {"State": f"unknown ({(result.stderr or result.stdout).strip()})"}
    text = result.stdout.strip()
    found = {key: re.search(rf"\b{key}=(\S+)", text) for key in ("State", "SlurmdStartTime")}
    node = {key: match.group(1) for key, match in found.items() if match}
    reason = re.search(r"\bReason=(.*?)(?= \w+=|$)", text)
    if reason:
        node["Reason"] = reason.group(1)
    return node


def _node_problem(settings: StackSettings, since: datetime | None = None) -> str | None:
    """None when the node takes jobs; else its state. With ``since`` (when this ``up`` started
    slurmd), the node must have registered since then, and a node drained by an earlier run
    is resumed."""
    node = _node(settings)
    state = node.get("State", "unknown")
    flags = state.split("+")
    if since is not None:
        try:
            registered = datetime.fromisoformat(node.get("SlurmdStartTime", ""))
        except ValueError:
            registered = None
        if registered is None or registered < since:
            return f"node {settings.slurm_node} is {state}, its slurmd not registered yet"
        if "DRAIN" in flags or flags[0] == "DOWN":
            log.warning("Slurm node %s was %s (%s): resuming it", settings.slurm_node, state,
                        node.get("Reason", "no reason"))
            _slurm_client(settings, "scontrol", "update", f"NodeName={settings.slurm_node}",
                          "State=RESUME")
    if flags[0] in ("IDLE", "MIXED", "ALLOCATED") and not NODE_UNUSABLE & set(flags):
        return None
    reason = f" ({node['Reason']})" if "Reason" in node else ""
    return f"node {settings.slurm_node} is {state}{reason}"


def _start_slurmd(settings: StackSettings) -> None:
    since = datetime.now().replace(microsecond=0)  # SlurmdStartTime is in whole local seconds
    server = _launch(settings, "slurmd", "-D", "-f", str(settings.slurm_conf_path),
                     "-N", settings.slurm_node)
    _await(settings, "slurmd", server, lambda: _node_problem(settings, since))


def _wait_for_node(settings: StackSettings) -> None:
    """A stack already up: its node takes jobs (it may be finishing one) or ``up`` fails."""
    deadline = time.monotonic() + 10
    while (problem := _node_problem(settings)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if problem is not None:
        raise StackError(f"the local Slurm takes no jobs: {problem}; `relion-zo stack down` and "
                         f"`up` restart it: {_log_tail(settings.slurm_dir / 'log' / 'slurmd.log')}")


def _slurm_up(settings: StackSettings) -> None:
    running = {name: _slurm_running(settings, name) for name in SLURM_DAEMONS}
    if all(running.values()):
        _wait_for_node(settings)
        return
    _check_slurm_folder(settings)
    conf = _slurm_conf(settings, _node_hardware())
    path = settings.slurm_conf_path
    if any(running.values()) and (not path.exists() or path.read_text() != conf):
        log.info("the local Slurm's configuration changed: restarting it")
        _stop_slurm(settings)
        running = dict.fromkeys(SLURM_DAEMONS, False)
    _prepare_slurm_folder(settings, conf)
    starts = {"munged": _start_munged, "slurmctld": _start_slurmctld, "slurmd": _start_slurmd}
    for name in SLURM_DAEMONS:
        if not running[name]:
            log.info("starting %s", name)
            starts[name](settings)
    if running["slurmd"]:
        _wait_for_node(settings)


def _environ_pids(entry: bytes, command: str = "") -> list[int]:
    """Processes (not this one) with ``entry`` in their environment and ``command`` in their
    command line."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if command in cmd and entry in environ:
            pids.append(int(proc.name))
    return pids


def _cancel_jobs(settings: StackSettings) -> None:
    """Cancel every unfinished job and wait (KillWait and a margin) until they have ended."""
    result = _slurm_client(settings, "squeue", "--noheader", "--format=%A",
                           f"--states={UNFINISHED_JOBS}")
    jobs = result.stdout.split() if result.returncode == 0 else []
    if not jobs:
        return
    log.info("cancelling %d Slurm job(s)", len(jobs))
    _slurm_client(settings, "scancel", *jobs)
    deadline = time.monotonic() + SLURM_KILL_WAIT + 10
    while time.monotonic() < deadline:
        left = _slurm_client(settings, "squeue", "--noheader", "--format=%A",
                             f"--states={UNFINISHED_JOBS}")
        if left.returncode != 0 or not left.stdout.split():
            return
        time.sleep(0.2)


def _stop_slurm(settings: StackSettings) -> None:
    """Jobs cancelled, then slurmd, slurmctld and munged by pid; then whatever this stack's
    jobs left (their slurmstepd, and processes of theirs: both found by their environment)."""
    if all(_slurm_running(settings, name) for name in SLURM_DAEMONS):
        _cancel_jobs(settings)
    for name in reversed(SLURM_DAEMONS):
        _stop_pid(_slurm_pid(settings, name), _slurm_needle(settings, name))
    leftovers = (_environ_pids(f"SLURM_CONF={settings.slurm_conf_path}".encode(), "slurmstepd")
                 + _environ_pids(f"SLURMD_NODENAME={settings.slurm_node}".encode()))
    for pid in leftovers:
        log.warning("killing pid %s, left by a job of the local Slurm", pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass



# ---------------------------------------------------------------- the three commands


def up(settings: StackSettings) -> dict:
    settings.root.mkdir(parents=True, exist_ok=True)
    passwords = _secrets(settings)
    if not _mariadb_running(settings):
        log.info("starting MariaDB on 127.0.0.1:%s", settings.mariadb_port)
        _start_mariadb(settings)
    if not settings.credentials_path.exists() or not _schema_ready(settings):
        _prepare_database(settings, passwords["mariadb"])
        from relion_zo.db import make_engine

        engine = make_engine(settings.credentials_path)
        try:
            create_schema(engine)
        finally:
            engine.dispose()
        (settings.mariadb_dir / "schema.done").write_text(SCHEMA_MARK)
    _prepare_side_users(settings)  # cheap and idempotent: keeps the roles as grants.sql has them
    if not _rabbit_running(settings):
        log.info("starting RabbitMQ on 127.0.0.1:%s", settings.rabbitmq_port)
        _start_rabbitmq(settings, passwords["rabbitmq"])
    elif _has_guest(settings):  # a server started before guest was removed at start
        _remove_guest(settings)
    _write_zocalo_config(settings, passwords["rabbitmq"])  # cheap; keeps it current
    from relion_zo import broker

    broker.declare(settings.zocalo_config_path)
    _slurm_up(settings)
    return status(settings)


def down(settings: StackSettings) -> None:
    _stop_slurm(settings)
    if _rabbit_running(settings):
        try:
            _ctl(settings, "stop", timeout=60)
        except subprocess.TimeoutExpired:
            pass
    _stop_pid(_rabbit_pid(settings), "beam")
    _stop_epmd(settings)
    _stop_pid(_mariadb_pid(settings), "mariadbd")


def status(settings: StackSettings) -> dict:
    return {
        "root": str(settings.root),
        "mariadb": {
            "running": _mariadb_running(settings),
            "pid": _mariadb_pid(settings) if _mariadb_running(settings) else None,
            "port": settings.mariadb_port,
        },
        "rabbitmq": {
            "running": _rabbit_running(settings),
            "pid": _rabbit_pid(settings) if _rabbit_running(settings) else None,
            "port": settings.rabbitmq_port,
        },
        **{name: _slurm_status(settings, name) for name in SLURM_DAEMONS},
        "credentials": str(settings.credentials_path),
        "web_credentials": str(settings.web_credentials_path),
        "processing_credentials": str(settings.processing_credentials_path),
        "zocalo_config": str(settings.zocalo_config_path),
        "slurm_conf": str(settings.slurm_conf_path),
    }


def _slurm_status(settings: StackSettings, name: str) -> dict:
    running = _slurm_running(settings, name)
    server = {"running": running, "pid": _slurm_pid(settings, name) if running else None}
    if name == "munged":
        server["socket"] = str(settings.munge_socket)
    else:
        server["port"] = settings.slurmctld_port if name == "slurmctld" else settings.slurmd_port
    if name == "slurmd":
        server["node"] = settings.slurm_node
    return server


# ---------------------------------------------------------------- fault injection (tests)


def stop_server(settings: StackSettings, name: str) -> None:
    """Stop one server ("mariadb", "rabbitmq", "munged", "slurmctld" or "slurmd") the way a
    crash would: SIGKILL."""
    if name in SLURM_DAEMONS:
        pid, needle = _slurm_pid(settings, name), _slurm_needle(settings, name)
    else:
        pid = _mariadb_pid(settings) if name == "mariadb" else _rabbit_pid(settings)
        needle = "mariadbd" if name == "mariadb" else "beam"
    if _alive(pid, needle):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid, needle) and time.monotonic() < deadline:
            time.sleep(0.1)


def start_server(settings: StackSettings, name: str) -> None:
    """Start one server again, with the stack's own settings."""
    if name in SLURM_DAEMONS:
        _slurm_up(settings)
    elif name == "mariadb":
        if not _mariadb_running(settings):
            _start_mariadb(settings)
    elif not _rabbit_running(settings):
        _start_rabbitmq(settings, _secrets(settings)["rabbitmq"])
