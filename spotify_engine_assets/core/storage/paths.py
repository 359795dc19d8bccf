"""Where the project's files live.

Every path is anchored on the repository (or an environment variable), never on the
current directory, so the CLI, tests and the Dagster webserver agree wherever they start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2]
REPO_ROOT = PACKAGE_DIR.parent

DATA_LAKE_ENV = "SPOTIFY_ENGINE_DATA_LAKE"
SQL_DIR_ENV = "SPOTIFY_ENGINE_SQL_DIR"


# The one pattern of every name that becomes a folder or file name: config names (trained_model
# partitions), partition keys of the artifact store, landing batch ids, search-space families and
# promoted study configs. No '/', no '..', no leading '.', '_' or '-', nothing a shell or a URL quotes.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,99}")
SAFE_NAME_RULE = "letters, digits, '_' and '-', starting with a letter or digit, at most 100 characters"


class UnsafeNameError(ValueError):
    """A name that would become a path is not a plain, safe name."""


def safe_name(name: object, what: str = "name") -> str:
    """``name`` itself when it matches :data:`SAFE_NAME`; else an :class:`UnsafeNameError` naming
    ``what`` (e.g. ``"config name"``) and the name."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UnsafeNameError(f"{what} {name!r} is not a safe name ({SAFE_NAME_RULE}): it becomes a folder name")
    return name


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
            digest.update(
                (file.relative_to(PACKAGE_DIR).as_posix() if file.is_relative_to(PACKAGE_DIR) else file.name).encode()
            )
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
