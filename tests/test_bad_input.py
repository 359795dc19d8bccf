"""Bad input at the platform level: each gives a clear error naming the thing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotify_engine_assets.core.storage.paths import REPO_ROOT, SQL_DIR_ENV
from spotify_engine_assets.runner import materialize_chain


def _load_definitions_with_sql(sql_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, SQL_DIR_ENV: str(sql_dir)}
    return subprocess.run(
        [sys.executable, "-c", "import spotify_engine_assets.definitions"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_sql_syntax_error_fails_definition_loading(tmp_path):
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "broken.sql").write_text("SELECT FROM WHERE (")
    result = _load_definitions_with_sql(tmp_path)
    assert result.returncode != 0
    assert "staging/broken.sql" in result.stderr


def test_sql_cycle_fails_definition_loading(tmp_path):
    (tmp_path / "marts").mkdir()
    (tmp_path / "marts" / "a.sql").write_text("SELECT * FROM marts.b")
    (tmp_path / "marts" / "b.sql").write_text("SELECT * FROM marts.a")
    result = _load_definitions_with_sql(tmp_path)
    assert result.returncode != 0
    assert "cycle" in result.stderr and "marts/a.sql" in result.stderr


def test_unknown_upstream_table_names_the_table(tmp_path):
    (tmp_path / "marts").mkdir()
    (tmp_path / "marts" / "orphan.sql").write_text("SELECT * FROM raw.not_a_table")
    result = _load_definitions_with_sql(tmp_path)
    assert result.returncode != 0
    assert "raw.not_a_table" in result.stderr and "marts/orphan.sql" in result.stderr


def test_unknown_model_config_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model configs.*known: .*gat_enhanced"):
        materialize_chain("tiny", configs=["gat_huge"], log=lambda message: None)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        materialize_chain("huge", log=lambda message: None)


def test_unknown_partition_on_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "SPOTIFY_ENGINE_DATA_LAKE": str(tmp_path / "lake")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "spotify_engine_assets.definitions",
            "--select",
            "listening/trained_model",
            "--partition",
            "gat_huge",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode != 0
    assert "gat_huge" in result.stderr + result.stdout
