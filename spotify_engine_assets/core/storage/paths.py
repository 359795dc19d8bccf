"""Where the project's files live.

Every path is anchored on the repository (or an environment variable), never on the
current directory, so the CLI, tests and the Dagster webserver agree wherever they start.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = PACKAGE_DIR.parent

DATA_LAKE_ENV = "SPOTIFY_ENGINE_DATA_LAKE"
SQL_DIR_ENV = "SPOTIFY_ENGINE_SQL_DIR"


def data_lake_root() -> Path:
    """The data lake root: ``$SPOTIFY_ENGINE_DATA_LAKE`` or the repository's ``data_lake/``."""
    configured = os.environ.get(DATA_LAKE_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / "data_lake"


def sql_models_dir() -> Path:
    """The dbt-like SQL project: ``$SPOTIFY_ENGINE_SQL_DIR`` or the repository's ``dbt_like_sql/``."""
    configured = os.environ.get(SQL_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / "dbt_like_sql"


def configs_dir() -> Path:
    """Packaged configuration: model registry, metric thresholds, run profiles."""
    return PACKAGE_DIR / "configs"


def source_version(*modules) -> str:
    """A code version for Dagster: hash of the source of the modules (every ``.py`` file of a
    package) an asset's logic lives in."""
    import hashlib
    import inspect

    digest = hashlib.sha256()
    for module in modules:
        path = Path(inspect.getfile(module))
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update((file.relative_to(PACKAGE_DIR).as_posix() if file.is_relative_to(PACKAGE_DIR) else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
