"""A throwaway PostgreSQL server in a folder: ``initdb`` + ``pg_ctl`` on 127.0.0.1, a free port,
password authentication (SCRAM) with a generated password that is passed on by environment
variable and never written to a committed file.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (or
``nobody``) through ``runuser``, and its data folder is a fresh temporary folder owned by that
user (a folder under a root-only path would be unreachable for it).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SUPERUSER = "spotify_engine"
STATE_FILE = "postgres.json"  # in the profile folder: port, data folder, user; never the password


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server could not start."""


def pg_bin(name: str) -> str:
    """A PostgreSQL program: ``$PG_BIN``, the PATH, then Debian's ``/usr/lib/postgresql/<v>/bin``."""
    candidates = [Path(os.environ["PG_BIN"]) / name] if os.environ.get("PG_BIN") else []
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise PostgresUnavailable(f"PostgreSQL program {name!r} not found (PATH, $PG_BIN, /usr/lib/postgresql/*/bin)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_user() -> str | None:
    """The user the server runs as: None (the current user) unless we are root."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@dataclass
class PostgresServer:
    """One server: ``start()`` creates (first time) and starts it, ``create_database()``, ``stop()``."""

    data_dir: str
    port: int
    password: str
    user: str = SUPERUSER
    host: str = "127.0.0.1"
    os_user: str | None = None

    # --------------------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, profile_dir: Path, port: int | None = None, password: str | None = None) -> "PostgresServer":
        """A new server for ``profile_dir`` (its data in ``profile_dir/pgdata``, or a temporary
        folder when running as root); nothing runs until ``start()``."""
        os_user = _run_user()
        profile_dir.mkdir(parents=True, exist_ok=True)
        if os_user is None:
            data_dir = str((profile_dir / "pgdata").resolve())
        else:
            data_dir = tempfile.mkdtemp(prefix="spotify-engine-pg-")
            shutil.chown(data_dir, user=os_user)
        return cls(data_dir, port or free_port(), password or secrets.token_urlsafe(24), os_user=os_user)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *args] if self.os_user else list(args)

    def _call(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
            )

    def start(self, timeout: float = 60) -> "PostgresServer":
        if not (Path(self.data_dir) / "PG_VERSION").exists():
            # the password goes to initdb in a file only the server's user can read, deleted at once
            fd, pwfile = tempfile.mkstemp(prefix="pgpw-")
            try:
                os.write(fd, self.password.encode())
                os.close(fd)
                if self.os_user:
                    shutil.chown(pwfile, user=self.os_user)
                self._call(
                    pg_bin("initdb"),
                    "-D",
                    self.data_dir,
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                )
            finally:
                os.unlink(pwfile)
        log = Path(self.data_dir) / "server.log"
        # TCP on 127.0.0.1 only; the unix socket lives inside the data folder
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off -c max_connections=200"
        self._call(
            pg_bin("pg_ctl"),
            "-D",
            self.data_dir,
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        return self

    def stop(self) -> None:
        if (Path(self.data_dir) / "postmaster.pid").exists():
            subprocess.run(
                self._cmd(pg_bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )

    def remove(self) -> None:
        """Stop and delete the data folder."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # --------------------------------------------------------------------------- databases
    def connect(self, db: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=db, connect_timeout=10
        )

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` unless it exists."""
        from psycopg2 import sql

        con = self.connect()
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            con.close()

    def url(self, db: str) -> str:
        """A SQLAlchemy URL (with the password: keep it out of logs and files)."""
        from urllib.parse import quote

        return f"postgresql+psycopg2://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/{db}"

    # --------------------------------------------------------------------------- state
    def save_state(self, profile_dir: Path) -> None:
        """Where the server is (never its password), so ``load_state`` + ``stop`` can end it later."""
        state = {k: v for k, v in asdict(self).items() if k != "password"}
        (profile_dir / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def load_state(cls, profile_dir: Path) -> "PostgresServer | None":
        path = profile_dir / STATE_FILE
        if not path.exists():
            return None
        return cls(password="", **json.loads(path.read_text()))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
