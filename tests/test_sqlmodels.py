"""Tests of the dbt-like SQL model loader (spotify_engine_assets.core.data.sqlmodels)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from spotify_engine_assets.core.data.sqlmodels import (
    DataTest,
    SqlModel,
    SqlModelError,
    load_sql_project,
    materialize_model,
    run_data_test,
)
from spotify_engine_assets.datasets.lastfm.data import LASTFM_SOURCES
from spotify_engine_assets.datasets.playlists.kaggle import KAGGLE_SOURCES

REAL_PROJECT = Path(__file__).resolve().parents[1] / "dbt_like_sql"
RAW_SOURCES = [
    f"raw.{name}" for name in ("genres", "artists", "artist_genres", "songs", "song_genres", "users", "plays")
]

# The real project also holds the playlist chain's folder, which reads the Kaggle ingestion's tables.
PROJECT_SOURCES = [*RAW_SOURCES, *KAGGLE_SOURCES, *LASTFM_SOURCES]
LISTENING_SCHEMAS = ("staging", "marts")


def listening_models(project):
    """The listening chain's models (staging and marts), in the project's order."""
    return {table: model for table, model in project.models.items() if model.schema in LISTENING_SCHEMAS}


RAW_TABLES = """
CREATE SCHEMA raw;
CREATE TABLE raw.genres(genre_id INTEGER, name VARCHAR, popularity DOUBLE);
INSERT INTO raw.genres VALUES (1, 'rock', 0.9), (2, ' jazz ', 0.4);
CREATE TABLE raw.artists(artist_id INTEGER, name VARCHAR, popularity DOUBLE);
INSERT INTO raw.artists VALUES (10, 'The Nodes', 0.8), (11, 'Edge Case', 0.3);
CREATE TABLE raw.artist_genres(artist_id INTEGER, genre_id INTEGER);
INSERT INTO raw.artist_genres VALUES (10, 1), (11, 2);
CREATE TABLE raw.songs(
    song_id INTEGER, artist_id INTEGER, title VARCHAR, duration_ms INTEGER, popularity DOUBLE);
INSERT INTO raw.songs VALUES
    (100, 10, 'Message Passing', 200000, 0.7),
    (101, 10, 'Over-smoothing', 180000, 0.5),
    (102, 11, 'Negative Sampling', 240000, 0.2);
CREATE TABLE raw.song_genres(song_id INTEGER, genre_id INTEGER);
INSERT INTO raw.song_genres VALUES (100, 1), (101, 1), (102, 2), (102, 2);
CREATE TABLE raw.users(user_id INTEGER, user_type VARCHAR, activity DOUBLE);
INSERT INTO raw.users VALUES (1, 'casual', 0.2), (2, 'Power ', 0.9);
CREATE TABLE raw.plays(
    play_id BIGINT, session_id BIGINT, user_id INTEGER, song_id INTEGER,
    position_in_session SMALLINT, played_at TIMESTAMP, ms_played INTEGER,
    track_duration_ms INTEGER, completion_ratio DOUBLE, skipped BOOLEAN);
INSERT INTO raw.plays VALUES
    (1, 1, 1, 100, 0, TIMESTAMP '2024-03-02 21:15:00', 200000, 200000, 1.0, false),
    (2, 1, 1, 101, 1, TIMESTAMP '2024-03-02 21:19:00', 30000, 180000, 0.17, true),
    (3, 2, 2, 100, 0, TIMESTAMP '2024-03-04 08:00:00', 250000, 200000, 1.0, false),
    (4, 2, 2, 100, 1, TIMESTAMP '2024-03-04 08:04:00', 100000, 200000, 0.5, false),
    (5, 2, 2, 102, 2, TIMESTAMP '2024-03-04 08:06:00', 240000, 240000, 1.0, false),
    (6, 3, NULL, 102, 0, TIMESTAMP '2024-03-05 10:00:00', 1000, 240000, 0.0, true),
    (7, 3, 2, 102, 1, TIMESTAMP '2024-03-05 10:01:00', -5, 240000, 0.0, true);
"""


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``root`` and return ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def raises_naming(files: dict[str, str], tmp_path: Path, *fragments: str) -> str:
    """Load a tmp project that must fail; assert the message holds every fragment."""
    write_project(tmp_path, files)
    with pytest.raises(SqlModelError) as info:
        load_sql_project(tmp_path, ["raw.plays", "raw.songs"])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


@pytest.fixture
def raw_con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute(RAW_TABLES)
    return con


def model_at(root: Path, relative: str, sql: str) -> SqlModel:
    """A one-model project written and loaded from ``root``; returns that model."""
    write_project(root, {relative: sql})
    schema, name = relative.removesuffix(".sql").split("/")
    return load_sql_project(root, RAW_SOURCES).models[f"{schema}.{name}"]


# --------------------------------------------------------------------------- the real project


def test_real_project_dependency_graph() -> None:
    project = load_sql_project(REAL_PROJECT, PROJECT_SOURCES)
    models = listening_models(project)
    assert models["marts.user_song_interactions"].depends_on == ("staging.stg_plays",)
    assert models["marts.songs"].depends_on == ("staging.stg_song_genres", "staging.stg_songs")
    assert models["staging.stg_plays"].depends_on == ("raw.plays",)
    staging = ("plays", "songs", "artists", "genres", "users", "song_genres")
    marts = ("user_song_interactions", "songs", "artists", "genres", "song_genres", "users")
    expected = {f"staging.stg_{name}" for name in staging} | {f"marts.{name}" for name in marts}
    assert set(models) == expected
    upstream = {"staging": {"raw"}, "marts": {"staging"}}
    for model in models.values():
        assert {dep.partition(".")[0] for dep in model.depends_on} == upstream[model.schema]
        assert model.path.is_file() and model.table == f"{model.schema}.{model.name}"
    assert project.sources == frozenset(PROJECT_SOURCES)
    playlists = {table for table, model in project.models.items() if model.schema == "playlists"}
    assert playlists == {
        f"playlists.{name}"
        for name in (
            "playlist_entries",
            "playlist_tracks",
            "playlists",
            "tracks",
            "artists",
            "artist_genres",
            "genres",
            "track_features",
        )
    }
    assert all(
        dep.partition(".")[0] in {"kaggle_raw", "playlists"} for t in playlists for dep in project.models[t].depends_on
    )


def test_real_project_is_in_topological_order() -> None:
    models = load_sql_project(REAL_PROJECT, PROJECT_SOURCES).models
    position = {table: index for index, table in enumerate(models)}
    for table, model in models.items():
        for dep in model.depends_on:
            assert dep in PROJECT_SOURCES or position[dep] < position[table], (table, dep)


def test_real_project_tests_are_declared() -> None:
    models = load_sql_project(REAL_PROJECT, PROJECT_SOURCES).models
    plays = {test.name: test for test in models["staging.stg_plays"].tests}
    assert {"not_null__play_id", "unique__play_id", "accepted_range__completion_ratio"} <= set(plays)
    assert plays["accepted_range__completion_ratio"].params == {"min": 0, "max": 1}
    assert plays["relationship__song_id"].referenced_tables() == ["staging.stg_songs"]
    severities = {test.severity for model in models.values() for test in model.tests}
    assert severities == {"error", "warn"}


def test_real_project_end_to_end(raw_con: duckdb.DuckDBPyConnection) -> None:
    models = listening_models(load_sql_project(REAL_PROJECT, PROJECT_SOURCES))
    summaries = {table: materialize_model(raw_con, model) for table, model in models.items()}

    assert summaries["staging.stg_plays"]["row_count"] == 5  # null user and negative ms dropped
    assert summaries["marts.user_song_interactions"]["row_count"] == 4
    stg_columns = [name for name, _ in summaries["staging.stg_plays"]["columns"]]
    assert "popularity" not in stg_columns and {"hour_of_day", "is_weekend"} <= set(stg_columns)
    for table in ("staging.stg_songs", "staging.stg_artists", "staging.stg_genres", "marts.songs"):
        assert "popularity" not in dict(summaries[table]["columns"])
    assert raw_con.sql("SELECT max(completion_ratio) FROM staging.stg_plays").fetchall() == [(1.0,)]
    assert raw_con.sql(
        "SELECT play_count, skip_count FROM marts.user_song_interactions WHERE user_id = 2 AND song_id = 100"
    ).fetchall() == [(2, 0)]

    for model in models.values():
        for test in model.tests:
            count, sample = run_data_test(raw_con, test)
            assert count == 0 and sample.height == 0, (test.model, test.name, sample)
    # every marts column is described in schema.yml, and every description names a built column
    for table, model in models.items():
        columns = [name for name, _ in summaries[table]["columns"]]
        assert {column for column, _ in model.descriptions} <= set(columns), table
        if model.schema == "marts":
            assert [column for column, _ in model.descriptions] == columns, table

    raw_con.execute(
        "INSERT INTO raw.plays VALUES (1, 9, 1, 102, 0, TIMESTAMP '2024-03-06 12:00:00', 1, 240000, 0.0, true)"
    )
    stg_plays = models["staging.stg_plays"]
    materialize_model(raw_con, stg_plays)
    unique = next(test for test in stg_plays.tests if test.name == "unique__play_id")
    count, sample = run_data_test(raw_con, unique)
    assert count == 2 and sample["play_id"].to_list() == [1, 1]


# --------------------------------------------------------------------------- loading rules


def test_dependencies_exclude_ctes_and_table_functions(tmp_path: Path) -> None:
    project = write_project(
        tmp_path,
        {
            "staging/a.sql": "WITH plays AS (SELECT * FROM raw.plays) SELECT * FROM plays",
            "staging/b.sql": "SELECT * FROM read_parquet('x.parquet') JOIN range(3) r ON true",
            # A qualified name is a real table even when a CTE shares its table name.
            "staging/c.sql": "WITH a AS (SELECT * FROM staging.a) SELECT * FROM a",
            "staging/d.sql": "SELECT * FROM songs UNION ALL SELECT * FROM Staging.A",
        },
    )
    models = load_sql_project(project, ["raw.plays", "raw.songs"]).models
    assert models["staging.a"].depends_on == ("raw.plays",)
    assert models["staging.b"].depends_on == ()
    assert models["staging.c"].depends_on == ("staging.a",)
    assert models["staging.d"].depends_on == ("raw.songs", "staging.a")
    order = list(models)
    assert order.index("staging.a") < order.index("staging.c")


def test_tables_named_in_query_table_and_query_are_dependencies(tmp_path: Path, con) -> None:
    """Issue 19: ``query_table('staging.z')`` recorded no dependency, so marts.a ran before its input."""
    expected = {  # file: (SQL, the tables it reads)
        "marts/a.sql": ("SELECT * FROM query_table('staging.z')", ("staging.z",)),
        "marts/b.sql": ("SELECT * FROM query_table(['staging.z', 'raw.plays'])", ("raw.plays", "staging.z")),
        "marts/c.sql": ("SELECT * FROM query('SELECT * FROM query_table(''staging.z'')')", ("staging.z",)),
        "staging/z.sql": ("SELECT 1 AS x", ()),
    }
    write_project(tmp_path, {file: sql for file, (sql, _) in expected.items()})
    models = load_sql_project(tmp_path, ["raw.plays", "raw.songs"]).models
    assert {f"{m.schema}/{m.name}.sql": m.depends_on for m in models.values()} == {
        f: d for f, (_, d) in expected.items()
    }
    assert list(models).index("staging.z") < list(models).index("marts.a")
    for table in ("staging.z", "marts.a"):  # DuckDB runs them in that order
        materialize_model(con, models[table])
    assert con.sql("SELECT x FROM marts.a").fetchall() == [(1,)]


def test_table_function_arguments_that_cannot_be_resolved_name_the_file(tmp_path: Path) -> None:
    cases = {
        "SELECT * FROM query_table('marts.nope')": "references unknown table marts.nope",
        "SELECT * FROM query_table(concat('raw', '.plays'))": "takes literal text",
        "SELECT * FROM query('SELECT * FROM raw.nope')": "references unknown table raw.nope",
    }
    for number, (sql, fragment) in enumerate(cases.items()):
        raises_naming({"marts/m.sql": sql}, tmp_path / str(number), "marts/m.sql", fragment)


def test_parse_error_names_file_and_position(tmp_path: Path) -> None:
    files = {"staging/bad.sql": "SELECT a,\nFROM WHERE"}
    message = raises_naming(files, tmp_path, "staging/bad.sql", "'WHERE' (line 2, col 10)")
    assert "\x1b" not in message


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT 1; SELECT 2", "2 statements"),
        ("CREATE TABLE t AS SELECT 1", "must be a query"),
        ("INSERT INTO raw.plays SELECT * FROM raw.plays", "must be a query"),
        ("", "is empty"),
        ("-- only a comment\n", "is empty"),
        ("SELECT 'unterminated", "does not parse"),
    ],
)
def test_model_must_be_exactly_one_query(tmp_path: Path, sql: str, fragment: str) -> None:
    raises_naming({"staging/m.sql": sql}, tmp_path, "staging/m.sql", fragment)


def test_trailing_semicolon_and_comment_are_one_query(tmp_path: Path) -> None:
    model = model_at(tmp_path, "staging/m.sql", "SELECT 1 AS x; -- done\n")
    assert model.depends_on == ()


@pytest.mark.parametrize("reference", ["raw.nope", "nope"])
def test_unknown_table(tmp_path: Path, reference: str) -> None:
    raises_naming(
        {"staging/m.sql": f"SELECT * FROM {reference}"},
        tmp_path,
        "staging/m.sql",
        f"references unknown table {reference}; known: raw.plays, raw.songs, staging.m",
    )


def test_ambiguous_bare_name_lists_candidates(tmp_path: Path) -> None:
    raises_naming(
        {
            "staging/users.sql": "SELECT 1 AS id",
            "marts/users.sql": "SELECT 1 AS id",
            "marts/m.sql": "SELECT * FROM users",
        },
        tmp_path,
        "marts/m.sql",
        "ambiguous",
        "marts.users, staging.users",
    )


def test_three_part_names_are_refused(tmp_path: Path) -> None:
    files = {"staging/m.sql": "SELECT * FROM memory.raw.plays"}
    raises_naming(files, tmp_path, "staging/m.sql", "three-part")


def test_duplicate_model_names_are_case_insensitive(tmp_path: Path) -> None:
    raises_naming(
        {"staging/Users.sql": "SELECT 1", "staging/users.sql": "SELECT 2"},
        tmp_path,
        "staging/Users.sql",
        "staging/users.sql",
    )


def test_duplicate_across_folder_case(tmp_path: Path) -> None:
    files = {"marts/x.sql": "SELECT 1", "Marts/X.sql": "SELECT 2"}
    raises_naming(files, tmp_path, "marts/x.sql", "Marts/X.sql")


def test_model_colliding_with_source(tmp_path: Path) -> None:
    raises_naming({"RAW/plays.sql": "SELECT 1"}, tmp_path, "RAW/plays.sql", "source raw.plays")


def test_sql_file_at_root_is_refused(tmp_path: Path) -> None:
    raises_naming({"loose.sql": "SELECT 1"}, tmp_path, "loose.sql", "schema folder")


def test_only_first_level_sql_files_are_models(tmp_path: Path) -> None:
    write_project(tmp_path, {"staging/m.sql": "SELECT 1", "staging/old/m2.sql": "SELECT nonsense FROM"})
    assert list(load_sql_project(tmp_path, []).models) == ["staging.m"]


def test_cycle_names_path_and_files(tmp_path: Path) -> None:
    raises_naming(
        {"staging/a.sql": "SELECT * FROM staging.b", "staging/b.sql": "SELECT * FROM staging.a"},
        tmp_path,
        "staging/a.sql",
        "staging/b.sql",
        "staging.a -> staging.b -> staging.a",
    )


def test_self_reference_is_a_cycle(tmp_path: Path) -> None:
    files = {"staging/a.sql": "SELECT * FROM a"}
    raises_naming(files, tmp_path, "staging/a.sql", "staging.a -> staging.a")


def test_malformed_source_name() -> None:
    with pytest.raises(ValueError, match="schema.table"):
        load_sql_project(REAL_PROJECT, ["plays"])


# --------------------------------------------------------------------------- schema.yml


def test_schema_yml_tests_are_parsed(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "staging/m.sql": "SELECT * FROM raw.plays",
            "staging/schema.yml": """
models:
  M:
    play_id: [not_null, unique]
    completion_ratio: [{accepted_range: {max: 1}}]
    user_type:
      - accepted_values: {values: [casual, 3]}
        severity: warn
    song_id: [{relationship: {to: SONGS}}]
""",
        },
    )
    model = load_sql_project(tmp_path, RAW_SOURCES).models["staging.m"]
    tests = {test.name: test for test in model.tests}
    assert list(tests) == [
        "not_null__play_id",
        "unique__play_id",
        "accepted_range__completion_ratio",
        "accepted_values__user_type",
        "relationship__song_id",
    ]
    assert tests["accepted_values__user_type"].severity == "warn"
    assert tests["not_null__play_id"].severity == "error"
    assert tests["relationship__song_id"].params == {"to": "raw.songs", "field": "song_id"}
    assert all(test.model == "staging.m" for test in tests.values())


@pytest.mark.parametrize(
    ("yml", "fragment"),
    [
        ("models:\n  m:\n    a: [is_fun]\n", "models.m.a[0]: unknown test kind 'is_fun'"),
        ("models:\n  nope:\n    a: [not_null]\n", "models.nope: no such model"),
        ("models:\n  m:\n    a: [accepted_range]\n", "accepted_range needs min and/or max"),
        ("models:\n  m:\n    a: [{accepted_range: {min: 2, max: 1}}]\n", "exceeds max"),
        ("models:\n  m:\n    a: [{accepted_range: {min: low}}]\n", "must be a number"),
        ("models:\n  m:\n    a: [{accepted_values: {values: []}}]\n", "non-empty list"),
        ("models:\n  m:\n    a: [{relationship: {to: marts.ghost}}]\n", "unknown table marts.ghost"),
        ("models:\n  m:\n    a: [{relationship: {field: a}}]\n", "missing parameter(s) to"),
        ("models:\n  m:\n    a: [{not_null: {strict: true}}]\n", "unknown parameter(s) strict"),
        ("models:\n  m:\n    a: [{not_null: null, severity: fatal}]\n", "severity must be one of"),
        ("models:\n  m:\n    a: [{not_null: null, unique: null}]\n", "expected one test kind"),
        ("models:\n  m:\n    a: [not_null, not_null]\n", "duplicate test not_null__a"),
        ("models:\n  m:\n    a: not_null\n", "list of tests"),
        ("models:\n  m: {a: [unique]}\n  M: {a: [not_null]}\n", "staging.m is declared twice"),
        ("models: [m]\n", "'models' must map"),
        ("version: 2\nmodels: {}\n", "the keys 'models' and (optional) 'descriptions'"),
        ("descriptions:\n  nope: {a: text}\n", "descriptions.nope: no such model"),
        ("descriptions:\n  m: {a: ''}\n", "descriptions.m: expected column names with non-empty texts"),
        ("descriptions:\n  m: [a]\n", "descriptions.m: expected column names with non-empty texts"),
        ("descriptions: [m]\n", "'descriptions' must map model names"),
        ("models:\n  m: [oops\n", "invalid YAML"),
    ],
)
def test_bad_schema_yml_entries(tmp_path: Path, yml: str, fragment: str) -> None:
    files = {"staging/m.sql": "SELECT 1 AS a", "staging/schema.yml": yml}
    raises_naming(files, tmp_path, "staging/schema.yml", fragment)


def test_schema_yml_descriptions_are_parsed(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "staging/m.sql": "SELECT 1 AS a, 2 AS b",
            "staging/schema.yml": "models:\n  m:\n    a: [not_null]\ndescriptions:\n  M:\n    a: ' The first. '\n    b: Second.\n",
        },
    )
    model = load_sql_project(tmp_path, RAW_SOURCES).models["staging.m"]
    assert model.descriptions == (("a", "The first."), ("b", "Second.")) and len(model.tests) == 1


def test_schema_yml_only_sees_its_own_folder(tmp_path: Path) -> None:
    raises_naming(
        {"staging/m.sql": "SELECT 1 AS a", "marts/schema.yml": "models:\n  m:\n    a: [not_null]\n"},
        tmp_path,
        "marts/schema.yml",
        "no such model",
    )


# --------------------------------------------------------------------------- materialization


def test_materialize_creates_table_in_schema(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    model = model_at(tmp_path, "staging/numbers.sql", "SELECT range AS n, 'x' AS label FROM range(3);\n")
    summary = materialize_model(con, model)
    assert summary == {"row_count": 3, "columns": [("n", "BIGINT"), ("label", "VARCHAR")]}
    assert con.sql('SELECT sum(n) FROM "staging"."numbers"').fetchall() == [(3,)]


@pytest.mark.parametrize(
    "bad_sql",
    [
        "SELECT no_such_column FROM range(3)",  # fails when bound
        # fails while running, after some rows were produced
        "SELECT CASE WHEN range = 2 THEN error('boom') ELSE range END AS answer FROM range(3)",
    ],
)
def test_failed_materialization_keeps_previous_table(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, bad_sql: str
) -> None:
    good = model_at(tmp_path / "v1", "staging/t.sql", "SELECT 42 AS answer")
    materialize_model(con, good)
    bad = model_at(tmp_path / "v2", "staging/t.sql", bad_sql)
    with pytest.raises(SqlModelError, match=r"staging/t\.sql: materializing staging\.t failed"):
        materialize_model(con, bad)
    assert con.sql("SELECT * FROM staging.t").fetchall() == [(42,)]
    materialize_model(con, good)  # the connection is usable again (no transaction left open)


def test_failed_materialization_creates_no_schema(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    bad = model_at(tmp_path, "fresh/t.sql", "SELECT no_such_column FROM range(3)")
    with pytest.raises(SqlModelError):
        materialize_model(con, bad)
    schemas = con.sql("SELECT schema_name FROM information_schema.schemata").fetchall()
    assert ("fresh",) not in schemas


def test_code_version_follows_sql(tmp_path: Path) -> None:
    first = model_at(tmp_path / "a", "s/m.sql", "SELECT 1")
    same = model_at(tmp_path / "b", "s/m.sql", "SELECT 1")
    other = model_at(tmp_path / "c", "s/m.sql", "SELECT 2")
    assert first.code_version == same.code_version != other.code_version
    assert len(first.code_version) == 16


# --------------------------------------------------------------------------- data tests


@pytest.fixture
def quality_con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("""
        CREATE SCHEMA s;
        CREATE TABLE s.parent(id INTEGER);
        INSERT INTO s.parent VALUES (1), (2);
        CREATE TABLE s.clean(id INTEGER, ratio DOUBLE, kind VARCHAR, parent_id INTEGER);
        INSERT INTO s.clean VALUES (1, 0.0, 'a', 1), (2, 1.0, 'b', 2), (3, 0.5, NULL, NULL);
        CREATE TABLE s.dirty AS SELECT * FROM s.clean;
        INSERT INTO s.dirty VALUES (NULL, -0.1, 'c', 3), (2, 1.5, 'a', 1);
    """)
    return con


CASES = [
    ("not_null", "id", {}, 1),
    ("unique", "id", {}, 2),
    ("accepted_range", "ratio", {"min": 0, "max": 1}, 2),
    ("accepted_values", "kind", {"values": ["a", "b"]}, 1),
    ("relationship", "parent_id", {"to": "s.parent", "field": "id"}, 1),
]


@pytest.mark.parametrize(("kind", "column", "params", "failures"), CASES)
def test_data_tests_find_planted_rows(
    quality_con: duckdb.DuckDBPyConnection, kind: str, column: str, params: dict, failures: int
) -> None:
    clean = DataTest(model="s.clean", kind=kind, column=column, params=params)
    dirty = DataTest(model="s.dirty", kind=kind, column=column, params=params)
    assert run_data_test(quality_con, clean)[0] == 0
    count, sample = run_data_test(quality_con, dirty, sample=1)
    assert count == failures
    assert sample.height == 1 and sample.columns == ["id", "ratio", "kind", "parent_id"]


def test_accepted_range_with_one_bound(quality_con: duckdb.DuckDBPyConnection) -> None:
    test = DataTest(model="s.dirty", kind="accepted_range", column="ratio", params={"min": 0})
    count, sample = run_data_test(quality_con, test)
    assert count == 1 and sample["ratio"].to_list() == [-0.1]
    assert test.description == "'ratio' of s.dirty lies in [0, +inf)."


def test_relationship_references_its_target() -> None:
    test = DataTest("s.a", "relationship", "x", {"to": "s.b", "field": "y"})
    assert test.referenced_tables() == ["s.b"]
    assert DataTest("s.a", "unique", "x", {}).referenced_tables() == []


def test_odd_identifiers_and_literals_are_quoted(con: duckdb.DuckDBPyConnection) -> None:
    table = '"odd schema"."t ""1"""'
    con.execute('CREATE SCHEMA "odd schema"')
    con.execute(f'CREATE TABLE {table} ("weird ""col""" VARCHAR)')
    con.execute(f"INSERT INTO {table} VALUES ('it''s'), (NULL), ('x; DROP TABLE y')")
    model = 'odd schema.t "1"'
    not_null = DataTest(model=model, kind="not_null", column='weird "col"', params={})
    assert not_null.name == "not_null__weird__col_"
    assert run_data_test(con, not_null)[0] == 1
    values = DataTest(model, "accepted_values", 'weird "col"', {"values": ["it's", "x; DROP TABLE y"]})
    assert run_data_test(con, values)[0] == 0
    assert "'it''s'" in values.failing_rows_sql()


def test_data_test_validates_kind_and_severity() -> None:
    with pytest.raises(ValueError, match="unknown test kind"):
        DataTest("s.a", "is_fun", "x", {})
    with pytest.raises(ValueError, match="severity"):
        DataTest("s.a", "unique", "x", {}, severity="fatal")


def test_negative_sample_is_refused(quality_con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="sample"):
        run_data_test(quality_con, DataTest("s.clean", "unique", "id", {}), sample=-1)
