"""The scale-out profile's Dagster files: a ``dagster.yaml`` whose run, event-log and schedule
storage is PostgreSQL (``dagster-postgres``; every connection setting read from environment
variables with ``env:``), the ``QueuedRunCoordinator`` with ``max_concurrent_runs`` >= 2, the
project's DuckDB writer pool, and a workspace file naming the code location's gRPC server.

Loading the instance checks the database at once; a server that is down or refuses the
credentials fails with :class:`ScaleInstanceError` naming the instance file, the setting and
host/port/db/user (the password redacted).
"""

import os
from pathlib import Path

import yaml

from ..core.storage.databases import connection_cause

ENV = {  # dagster.yaml setting -> environment variable
    "hostname": "SPOTIFY_ENGINE_PG_HOST",
    "port": "SPOTIFY_ENGINE_PG_PORT",
    "username": "SPOTIFY_ENGINE_PG_USER",
    "password": "SPOTIFY_ENGINE_PG_PASSWORD",
    "db_name": "SPOTIFY_ENGINE_PG_DB",
}
DAGSTER_DB = "dagster"
OPTUNA_DB = "optuna"
LOCATION = "spotify_engine"


class ScaleInstanceError(RuntimeError):
    """The scale profile's Dagster instance cannot reach its PostgreSQL storage."""


def instance_config(max_concurrent_runs: int = 2, dequeue_interval_seconds: int = 1) -> dict:
    if max_concurrent_runs < 1:
        raise ValueError("max_concurrent_runs must be >= 1")
    return {
        # one PostgreSQL database for run, event-log and schedule storage (dagster-postgres)
        # scheme: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the driver here is psycopg2
        "storage": {
            "postgres": {
                "postgres_db": {**{key: {"env": var} for key, var in ENV.items()}, "scheme": "postgresql+psycopg2"}
            }
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": dequeue_interval_seconds},
        },
        "telemetry": {"enabled": False},
        # runs: how many the queue lets run at once (Dagster 1.13 reads the limit here, not under
        # run_coordinator); pools: the DuckDB writer pool, one writer at a time across every run
        # sharing this instance
        "concurrency": {"runs": {"max_concurrent_runs": max_concurrent_runs}, "pools": {"default_limit": 1}},
    }


def write_home(home: Path, max_concurrent_runs: int = 2) -> Path:
    """``home/dagster.yaml`` for the profile (no credentials in it: only ``env:`` references)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    header = (
        "# Written by spotify_engine_assets.scale (the scale-out profile). Credentials come from the\n"
        f"# environment: {', '.join(ENV.values())}.\n"
    )
    path.write_text(header + yaml.safe_dump(instance_config(max_concurrent_runs), sort_keys=False))
    return path


def write_workspace(path: Path, port: int, host: str = "127.0.0.1") -> Path:
    """A workspace file with the code location served by ``dagster api grpc`` at host:port."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump({"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": LOCATION}}]})
    )
    return path


def server_env(server, db: str = DAGSTER_DB) -> dict[str, str]:
    """The environment variables ``dagster.yaml`` reads for ``server`` (a PostgresServer)."""
    return {
        ENV["hostname"]: server.host,
        ENV["port"]: str(server.port),
        ENV["username"]: server.user,
        ENV["password"]: server.password,
        ENV["db_name"]: db,
    }


def describe(env: dict | None = None) -> str:
    env = os.environ if env is None else env
    shown = {key: env.get(var, f"<${var} unset>") for key, var in ENV.items() if key != "password"}
    password = "***" if env.get(ENV["password"]) else f"<${ENV['password']} unset>"
    return (
        f"host={shown['hostname']} port={shown['port']} db={shown['db_name']} user={shown['username']} "
        f"password={password}"
    )


def _reason(error: BaseException, password: str) -> str:
    chain, seen = [], error
    while seen is not None and len(chain) < 6:
        chain.append(str(seen).strip().splitlines()[0] if str(seen).strip() else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    text = " <- ".join(chain)
    return text.replace(password, "***") if password else text


def load_instance(home: Path):
    """The profile's ``DagsterInstance`` (``home/dagster.yaml``), its database checked now.

    Raises :class:`ScaleInstanceError` naming the instance, the setting and the connection (no
    password) when PostgreSQL is down, the credentials are wrong or a variable is unset.
    """
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    missing = [var for var in ENV.values() if not os.environ.get(var)]
    where = f"Dagster instance {home / 'dagster.yaml'} (storage.postgres.postgres_db)"
    if missing:
        raise ScaleInstanceError(f"{where}: environment variable(s) {', '.join(missing)} unset")
    try:
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        instance.get_runs(limit=1)
    except Exception as error:  # noqa: BLE001 - any failure to reach the storage, reported clearly
        reason = _reason(error, os.environ.get(ENV["password"], ""))
        raise ScaleInstanceError(f"{where}: {connection_cause(reason, 'PostgreSQL')}; {describe()}: {reason}") from None
    return instance
