"""A dbt-like project of SQL models, loaded with sqlglot and materialised into DuckDB.

Layout of a project folder::

    <root>/
        <schema>/<name>.sql    # one model: the DuckDB table "<schema>"."<name>"
        <schema>/schema.yml    # optional: data tests on that folder's models

Models
    Every ``.sql`` file directly inside a first-level folder is one model; the folder is
    its schema and the file stem its table. Hidden folders (``.name``) are skipped; a
    ``.sql`` file at the root has no schema and is an error. A file holds exactly one
    query (SELECT, FROM-first, WITH, UNION ...), without DDL or DML: materialising it runs
    ``CREATE OR REPLACE TABLE "<schema>"."<name>" AS <query>``.

Dependencies
    Read from the SQL itself: every table the query reads, minus its CTE names and table
    functions such as ``read_parquet(...)``; the tables named in ``query_table('s.t')``
    and in ``query('<SQL>')`` count too (their arguments must be literal text). A ``schema.table`` reference must be a model
    or a declared source (the raw tables); a bare ``table`` must match the table name of
    exactly one of them. Names compare case-insensitively, as DuckDB identifiers do.
    Models are ordered topologically; a cycle is an error.

Data tests (``<schema>/schema.yml``)::

    models:
      stg_plays:                     # a model (file stem) of this folder
        play_id: [not_null, unique]  # column: list of tests
        completion_ratio:
          - accepted_range: {min: 0, max: 1}       # inclusive; min and/or max
        user_type:
          - accepted_values: {values: [casual, regular, power]}
            severity: warn                         # "error" (default) or "warn"
        song_id:
          - relationship: {to: staging.stg_songs, field: song_id}  # field defaults to the column

A test is a bare kind (``not_null``, ``unique``) or a mapping with exactly one kind key
(its value: the parameters) and an optional ``severity``. Kinds: ``not_null``, ``unique``
(non-null values occurring more than once fail), ``accepted_range`` (``min`` / ``max``
numbers), ``accepted_values`` (``values``: a non-empty list), ``relationship`` (``to``: a
model or source, ``field``: its column). NULLs fail only ``not_null``. An ``error`` test is
a blocking gate, a ``warn`` test is reported only.

Column descriptions (the same ``schema.yml``, optional, as dbt's ``description:``)::

    descriptions:
      stg_plays:                     # a model of this folder
        play_id: One play of a song.  # column: text, shown in the Dagster UI's column schema

Every problem found while loading raises :class:`SqlModelError`, whose message starts
with the offending file(s), relative to the project root.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import sqlglot
import yaml
from sqlglot import exp

from ..storage.artifacts import pause_point
from ..strict_yaml import load_yaml

DIALECT = "duckdb"
SCHEMA_FILE = "schema.yml"
DESCRIPTIONS_KEY = "descriptions"  # schema.yml: {model: {column: description}}
SEVERITIES = ("error", "warn")
TEST_KINDS = ("not_null", "unique", "accepted_range", "accepted_values", "relationship")

_NON_WORD = re.compile(r"\W", re.ASCII)
_TOKEN_REPR = re.compile(r"<Token token_type: [\w.]+, text: (?P<text>.*?), line: \d+.*?>")
_CHILD, _PARENT = "child", "parent"
BeforeCommit = Callable[[duckdb.DuckDBPyConnection], None]


class SqlModelError(Exception):
    """A SQL project problem; the message names the file(s) concerned and the problem."""


def _error(origin: str, problem: str) -> SqlModelError:
    """A :class:`SqlModelError` reading ``"<origin>: <problem>"``."""
    return SqlModelError(f"{origin}: {problem}")


# --------------------------------------------------------------------------- data tests


@dataclass(frozen=True)
class DataTest:
    """One data test on one column of one model.

    ``params`` by kind: ``accepted_range`` ``{"min": x, "max": y}`` (either may be absent),
    ``accepted_values`` ``{"values": [...]}``, ``relationship`` ``{"to": "schema.table",
    "field": "column"}``; empty for ``not_null`` and ``unique``.
    """

    model: str
    kind: str
    column: str
    params: dict[str, Any]
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.kind not in TEST_KINDS:
            raise ValueError(f"unknown test kind {self.kind!r}; known: {', '.join(TEST_KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")

    @property
    def name(self) -> str:
        """``<kind>__<column>``, non-word characters of the column replaced by ``_``."""
        return f"{self.kind}__{_NON_WORD.sub('_', self.column)}"

    @property
    def description(self) -> str:
        """One human sentence stating what the test asserts."""
        return f"{self.column!r} of {self.model} {_CLAIMS[self.kind](self.params)}."

    def failing_rows_sql(self) -> str:
        """A DuckDB SELECT returning the model's rows that fail the test."""
        return _failing_rows(self).sql(dialect=DIALECT)

    def referenced_tables(self) -> list[str]:
        """Tables other than the model that the test reads: the target of a relationship."""
        return [self.params["to"]] if self.kind == "relationship" else []


def _range_claim(params: Mapping[str, Any]) -> str:
    """``lies in [min, max]``, with an open end for a missing bound."""
    low = f"[{params['min']}" if "min" in params else "(-inf"
    high = f"{params['max']}]" if "max" in params else "+inf)"
    return f"lies in {low}, {high}"


_CLAIMS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "not_null": lambda params: "is never null",
    "unique": lambda params: "holds no duplicate values",
    "accepted_range": _range_claim,
    "accepted_values": lambda params: "is one of " + ", ".join(map(repr, params["values"])),
    "relationship": lambda params: f"exists as {params['field']!r} of {params['to']}",
}


def _failing_rows(test: DataTest) -> exp.Select:
    """The failing-rows query as a sqlglot tree: identifiers quoted, values as literals."""
    condition = _FAILURE_CONDITIONS[test.kind](test, exp.column(test.column, table=_CHILD, quoted=True))
    return exp.select("*").from_(_table_expression(test.model, alias=_CHILD)).where(condition)


def _is_present(column: exp.Column) -> exp.Expression:
    return column.is_(exp.null()).not_()


def _is_null(test: DataTest, column: exp.Column) -> exp.Expression:
    return column.is_(exp.null())


def _is_duplicated(test: DataTest, column: exp.Column) -> exp.Expression:
    """The value is one of the column's non-null values occurring more than once."""
    bare = exp.column(test.column, quoted=True)
    duplicated = exp.select(bare).from_(_table_expression(test.model)).where(_is_present(bare)).group_by(bare)
    return column.isin(query=duplicated.having(exp.func("count", exp.Star()) > 1))


def _is_out_of_range(test: DataTest, column: exp.Column) -> exp.Expression:
    """``column < min OR column > max`` for the bounds present; NULL passes."""
    checks = []
    if "min" in test.params:
        checks.append(column < exp.convert(test.params["min"]))
    if "max" in test.params:
        checks.append(column > exp.convert(test.params["max"]))
    return exp.and_(_is_present(column), exp.or_(*checks))


def _is_not_accepted(test: DataTest, column: exp.Column) -> exp.Expression:
    """The value is none of the accepted literals; NULL passes."""
    accepted = column.isin(*(exp.convert(value) for value in test.params["values"]))
    return exp.and_(_is_present(column), accepted.not_())


def _is_orphan(test: DataTest, column: exp.Column) -> exp.Expression:
    """No row of the target has ``field`` equal to the value; NULL passes."""
    parent_column = exp.column(test.params["field"], table=_PARENT, quoted=True)
    parent = _table_expression(test.params["to"], alias=_PARENT)
    parent_row = exp.select("1").from_(parent).where(parent_column.eq(column))
    return exp.and_(_is_present(column), exp.Exists(this=parent_row).not_())


_FAILURE_CONDITIONS: dict[str, Callable[[DataTest, exp.Column], exp.Expression]] = {
    "not_null": _is_null,
    "unique": _is_duplicated,
    "accepted_range": _is_out_of_range,
    "accepted_values": _is_not_accepted,
    "relationship": _is_orphan,
}


def quote_identifier(name: str) -> str:
    """A DuckDB identifier as a quoted SQL name (embedded double quotes doubled): safe for any
    text, including user-supplied table or column names."""
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """``schema.name`` (or a bare ``name``) as quoted SQL: ``"schema"."name"``."""
    return ".".join(quote_identifier(part) for part in table.split(".", 1))


def _table_expression(table: str, alias: str | None = None) -> exp.Table:
    """A quoted ``"schema"."name"`` reference for a ``schema.name`` string."""
    schema, _, name = table.partition(".")
    return exp.table_(name, db=schema, quoted=True, alias=alias)


# --------------------------------------------------------------------------- project model


@dataclass(frozen=True)
class _SchemaFile:
    """A ``<schema>/<name>.sql`` file."""

    schema: str
    name: str
    path: Path

    @property
    def table(self) -> str:
        """``schema.name``."""
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class SqlModel(_SchemaFile):
    """One ``<schema>/<name>.sql`` file: the query that builds ``"<schema>"."<name>"``."""

    sql: str
    depends_on: tuple[str, ...]
    tests: tuple[DataTest, ...]
    descriptions: tuple[tuple[str, str], ...] = ()  # (column, description) from schema.yml ``descriptions``

    @property
    def code_version(self) -> str:
        """First 16 hex characters of the SHA-256 of the SQL text."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SqlProject:
    """A loaded SQL project: its models in topological order and its allowed sources."""

    root: Path
    models: dict[str, SqlModel]
    sources: frozenset[str]


@dataclass(frozen=True)
class _ModelFile(_SchemaFile):
    """A discovered model file before parsing (``relative``: its path from the project root)."""

    relative: str


class _Catalog:
    """The tables a project may reference (models and sources) and how names resolve."""

    def __init__(self, files: Iterable[_ModelFile], sources: Iterable[str]) -> None:
        self.files: dict[str, _ModelFile] = {}
        self._by_key: dict[str, str] = {}
        for source in sorted(sources):
            self._by_key.setdefault(source.lower(), source)
        for file in files:
            self._add_model(file)
        self._by_name: dict[str, list[str]] = {}
        for table in sorted(self._by_key.values()):
            self._by_name.setdefault(table.partition(".")[2].lower(), []).append(table)

    def _add_model(self, file: _ModelFile) -> None:
        """Register a model, refusing a name already taken (case-insensitively)."""
        key = file.table.lower()
        taken = self._by_key.get(key)
        if taken in self.files:
            other = self.files[taken].relative
            raise _error(file.relative, f"model {file.table} is also defined by {other} (names are case-insensitive)")
        if taken is not None:
            raise _error(file.relative, f"model {file.table} has the name of source {taken}")
        self._by_key[key] = file.table
        self.files[file.table] = file

    def resolve(self, reference: exp.Table) -> str:
        """The canonical ``schema.table`` a reference names; ``ValueError`` if none or several."""
        if reference.catalog:
            raise ValueError(f"three-part name {reference.sql(DIALECT)} is not supported")
        if reference.db:
            return self._qualified(f"{reference.db}.{reference.name}")
        tables = self._by_name.get(reference.name.lower(), [])
        if len(tables) > 1:
            raise ValueError(f"table name {reference.name!r} is ambiguous; qualify it as one of {', '.join(tables)}")
        if not tables:
            raise ValueError(self._unknown(reference.name))
        return tables[0]

    def resolve_name(self, text: str) -> str:
        """:meth:`resolve` for a table name written as text, e.g. ``"marts.songs"``."""
        try:
            reference = exp.to_table(text, dialect=DIALECT)
        except sqlglot.errors.SqlglotError:
            raise ValueError(f"{text!r} is not a table name") from None
        return self.resolve(reference)

    def _qualified(self, table: str) -> str:
        try:
            return self._by_key[table.lower()]
        except KeyError:
            raise ValueError(self._unknown(table)) from None

    def _unknown(self, table: str) -> str:
        known = ", ".join(sorted(self._by_key.values())) or "(none)"
        return f"references unknown table {table}; known: {known}"


# --------------------------------------------------------------------------- loading


def load_sql_project(root: Path, sources: Iterable[str]) -> SqlProject:
    """Load, parse, resolve and order every model (with its data tests) under ``root``.

    ``sources`` are the ``schema.table`` names of raw tables the models may read.
    Raises :class:`SqlModelError` naming the file on any problem, ``ValueError`` for a
    malformed source name.
    """
    root = Path(root)
    if not root.is_dir():
        raise _error(str(root), "SQL project folder does not exist")
    source_names = frozenset(_check_source(source) for source in sources)
    catalog = _Catalog(_discover_model_files(root), source_names)
    texts = {table: _read_text(file.path, file.relative) for table, file in catalog.files.items()}
    dependencies = {table: _dependencies(catalog, catalog.files[table], text) for table, text in texts.items()}
    schema_files = _schema_documents(root)
    tests = _load_tests(schema_files, catalog)
    descriptions = _load_descriptions(schema_files, catalog)
    models = {}
    for table in _topological_order(catalog, dependencies):
        file = catalog.files[table]
        models[table] = SqlModel(
            file.schema,
            file.name,
            file.path,
            texts[table],
            dependencies[table],
            tuple(tests.get(table, ())),
            tuple(descriptions.get(table, {}).items()),
        )
    return SqlProject(root=root, models=models, sources=source_names)


def _check_source(source: str) -> str:
    """Validate a ``schema.table`` source name."""
    schema, dot, table = source.partition(".")
    if not (schema and dot and table):
        raise ValueError(f"source {source!r} is not of the form schema.table")
    return source


def _discover_model_files(root: Path) -> list[_ModelFile]:
    """Every ``<folder>/<name>.sql`` directly in a visible first-level folder of ``root``."""
    stray = sorted(path.name for path in root.glob("*.sql") if path.is_file())
    if stray:
        raise _error(stray[0], "a model must live in a schema folder: <schema>/<name>.sql")
    files = []
    for folder in _schema_folders(root):
        for path in sorted(p for p in folder.glob("*.sql") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if "." in folder.name:
                raise _error(relative, f"schema folder name {folder.name!r} must not contain '.'")
            files.append(_ModelFile(folder.name, path.stem, path, relative))
    return files


def _read_text(path: Path, relative: str) -> str:
    """A project file's UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _error(relative, f"is not UTF-8 text: {err}") from err


def _schema_folders(root: Path) -> list[Path]:
    """First-level folders of ``root`` that are not hidden, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _parse_query(file: _ModelFile, text: str) -> exp.Query:
    """The single query statement of a model file."""
    try:
        parsed = sqlglot.parse(text, read=DIALECT)
    except sqlglot.errors.SqlglotError as err:
        raise _error(file.relative, f"SQL does not parse: {_parse_error_message(err)}") from err
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise _error(file.relative, "is empty; a model is exactly one query")
    if len(statements) > 1:
        raise _error(file.relative, f"holds {len(statements)} statements; a model is exactly one query")
    (statement,) = statements
    if not isinstance(statement, exp.Query):
        problem = f"is a {statement.key.upper()} statement; a model must be a query (SELECT, WITH, UNION ...)"
        raise _error(file.relative, problem)
    return statement


def _parse_error_message(err: sqlglot.errors.SqlglotError) -> str:
    """sqlglot's first error with its line and column, without terminal highlighting."""
    details = getattr(err, "errors", None)
    if not details:
        return str(err)
    first = details[0]
    description = _TOKEN_REPR.sub(lambda match: repr(match["text"]), first["description"])
    return f"{description} (line {first['line']}, col {first['col']})"


def _dependencies(catalog: _Catalog, file: _ModelFile, text: str) -> tuple[str, ...]:
    """Sorted canonical names of the tables a model's query reads."""
    tables = set()
    statement = _parse_query(file, text)
    for reference in _table_references(statement):
        try:
            tables.add(catalog.resolve(reference))
        except ValueError as err:
            raise _error(file.relative, str(err)) from None
    try:
        tables.update(_table_function_reads(catalog, statement))
    except ValueError as err:
        raise _error(file.relative, str(err)) from None
    return tuple(sorted(tables))


def _table_function_reads(catalog: _Catalog, statement: exp.Expression) -> set[str]:
    """Tables read through DuckDB table functions that take a table by name:
    ``query_table('marts.songs')`` (or a list of names) and ``query('<SQL>')`` (its SQL's
    tables). Any other argument than a literal is a ``ValueError``: the model's input could
    not be known before it runs."""
    tables = set()
    for table in statement.find_all(exp.Table):
        call = table.this
        name = call.name.lower() if isinstance(call, exp.Anonymous) else ""
        if name not in ("query_table", "query_table_or_view", "query"):
            continue
        first = call.expressions[0] if call.expressions else None
        names = first.expressions if isinstance(first, exp.Array) else [first]
        if not all(isinstance(arg, exp.Literal) and arg.is_string for arg in names):
            raise ValueError(
                f"{call.sql(DIALECT)}: {name}() takes literal text here (the tables it reads must "
                "be known before the model runs)"
            )
        for arg in names:
            if name != "query":
                tables.add(catalog.resolve_name(arg.this))
                continue
            try:
                inner = sqlglot.parse_one(arg.this, read=DIALECT)
            except sqlglot.errors.SqlglotError as err:
                raise ValueError(f"{call.sql(DIALECT)}: SQL does not parse: {_parse_error_message(err)}") from None
            tables.update(catalog.resolve(reference) for reference in _table_references(inner))
            tables.update(_table_function_reads(catalog, inner))
    return tables


def _table_references(statement: exp.Query) -> list[exp.Table]:
    """Tables a query reads: named tables that are neither CTEs nor table functions."""
    cte_names = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    return [
        table
        for table in statement.find_all(exp.Table)
        if isinstance(table.this, exp.Identifier) and (table.db or table.name.lower() not in cte_names)
    ]


def _topological_order(catalog: _Catalog, dependencies: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Models ordered so that each comes after the models it reads."""
    graph = {table: [dep for dep in dependencies[table] if dep in dependencies] for table in sorted(dependencies)}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        cycle = list(reversed(err.args[1]))  # graphlib lists data flow; show "reads" order
        files = ", ".join(catalog.files[table].relative for table in dict.fromkeys(cycle))
        raise _error(files, f"dependency cycle {' -> '.join(cycle)} (each model reads the next)") from None


# --------------------------------------------------------------------------- schema.yml


def _schema_documents(root: Path) -> list[tuple[Path, str, dict]]:
    """Every folder's ``schema.yml``, read and parsed once: ``(path, path relative to root, document)``."""
    documents = []
    for folder in _schema_folders(root):
        path = folder / SCHEMA_FILE
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        try:
            document = load_yaml(_read_text(path, relative), relative) or {}
        except yaml.YAMLError as err:
            raise _error(relative, f"invalid YAML: {err}") from err
        if not isinstance(document, dict) or set(document) - {"models", DESCRIPTIONS_KEY}:
            raise _error(relative, f"expected a mapping with the keys 'models' and (optional) '{DESCRIPTIONS_KEY}'")
        documents.append((path, relative, document))
    return documents


def _load_tests(documents: list[tuple[Path, str, dict]], catalog: _Catalog) -> dict[str, list[DataTest]]:
    """The data tests of every folder's ``schema.yml``, keyed by model table."""
    tests: dict[str, list[DataTest]] = {}
    for path, relative, document in documents:
        tests.update(_load_schema_file(path, relative, document, catalog))
    return tests


def _load_schema_file(path: Path, relative: str, document: dict, catalog: _Catalog) -> dict[str, list[DataTest]]:
    """Tests declared in one ``schema.yml``; its models must be files of the same folder."""
    declared = document.get("models") or {}
    if not isinstance(declared, dict):
        raise _error(relative, "'models' must map model names to columns")
    folder_models = {f.name.lower(): f.table for f in catalog.files.values() if f.path.parent == path.parent}
    tests = {}
    for model_name, columns in declared.items():
        table = folder_models.get(str(model_name).lower())
        if table is None:
            known = ", ".join(sorted(folder_models)) or "(none)"
            raise _error(relative, f"models.{model_name}: no such model in this folder; known: {known}")
        if table in tests:
            raise _error(relative, f"models.{model_name}: {table} is declared twice")
        tests[table] = _model_tests(table, columns, f"models.{model_name}", relative, catalog)
    return tests


def _load_descriptions(documents: list[tuple[Path, str, dict]], catalog: _Catalog) -> dict[str, dict[str, str]]:
    """Column descriptions of every folder's ``schema.yml`` (``descriptions: {model: {column: text}}``),
    keyed by model table; shown as the columns' descriptions in the Dagster UI."""
    found: dict[str, dict[str, str]] = {}
    for path, relative, document in documents:
        folder = path.parent
        declared = document.get(DESCRIPTIONS_KEY) or {}
        if not isinstance(declared, dict):
            raise _error(relative, f"'{DESCRIPTIONS_KEY}' must map model names to {{column: description}}")
        folder_models = {f.name.lower(): f.table for f in catalog.files.values() if f.path.parent == folder}
        for model_name, columns in declared.items():
            table = folder_models.get(str(model_name).lower())
            if table is None:
                known = ", ".join(sorted(folder_models)) or "(none)"
                raise _error(relative, f"{DESCRIPTIONS_KEY}.{model_name}: no such model in this folder; known: {known}")
            if not isinstance(columns, dict) or not all(
                isinstance(c, str) and isinstance(d, str) and d.strip() for c, d in columns.items()
            ):
                raise _error(relative, f"{DESCRIPTIONS_KEY}.{model_name}: expected column names with non-empty texts")
            found[table] = {column: text.strip() for column, text in columns.items()}
    return found


def _model_tests(table: str, columns: Any, location: str, relative: str, catalog: _Catalog) -> list[DataTest]:
    """Tests of one model: ``{column: [test, ...]}``, test names unique."""
    if not isinstance(columns, dict):
        raise _error(relative, f"{location}: expected a mapping of column names to test lists")
    tests: dict[str, DataTest] = {}
    for column, entries in columns.items():
        if not isinstance(column, str) or not isinstance(entries, list):
            raise _error(relative, f"{location}.{column}: expected a column name with a list of tests")
        for index, entry in enumerate(entries):
            where = f"{location}.{column}[{index}]"
            try:
                test = _parse_test(table, column, entry, catalog)
            except ValueError as err:
                raise _error(relative, f"{where}: {err}") from None
            if test.name in tests:
                raise _error(relative, f"{where}: duplicate test {test.name}")
            tests[test.name] = test
    return list(tests.values())


def _parse_test(table: str, column: str, entry: Any, catalog: _Catalog) -> DataTest:
    """One test entry: ``kind`` or ``{kind: params, severity: ...}``."""
    if isinstance(entry, str):
        kind, params, severity = entry, None, "error"
    elif isinstance(entry, dict):
        options = dict(entry)
        severity = options.pop("severity", "error")
        if len(options) != 1:
            raise ValueError(f"expected one test kind (of {', '.join(TEST_KINDS)}) plus an optional severity")
        ((kind, params),) = options.items()
    else:
        raise ValueError(f"expected a test kind or a mapping, got {entry!r}")
    if kind not in TEST_KINDS:
        raise ValueError(f"unknown test kind {kind!r}; known: {', '.join(TEST_KINDS)}")
    if not isinstance(params, dict | None):
        raise ValueError(f"{kind} parameters must be a mapping, got {params!r}")
    checked = _PARAMETER_CHECKS[kind](params or {}, column, catalog)
    return DataTest(model=table, kind=kind, column=column, params=checked, severity=severity)


def _check_keys(params: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse missing required and unknown parameter keys."""
    missing = [key for key in required if key not in params]
    unknown = sorted(set(params) - set(required) - set(optional))
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(missing)}")
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(str, unknown))}")


def _no_parameters(params: Mapping[str, Any], column: str, catalog: _Catalog) -> dict[str, Any]:
    """``not_null`` and ``unique`` take no parameters."""
    _check_keys(params, required=())
    return {}


def _range_parameters(params: Mapping[str, Any], column: str, catalog: _Catalog) -> dict[str, Any]:
    """``accepted_range``: numeric ``min`` and/or ``max``, ``min <= max``."""
    _check_keys(params, required=(), optional=("min", "max"))
    if not params:
        raise ValueError("accepted_range needs min and/or max")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"accepted_range {key} must be a number, got {value!r}")
    if "min" in params and "max" in params and params["min"] > params["max"]:
        raise ValueError(f"accepted_range min {params['min']} exceeds max {params['max']}")
    return dict(params)


def _values_parameters(params: Mapping[str, Any], column: str, catalog: _Catalog) -> dict[str, Any]:
    """``accepted_values``: a non-empty list of scalar ``values``."""
    _check_keys(params, required=("values",))
    values = params["values"]
    if not isinstance(values, list) or not values:
        raise ValueError("accepted_values values must be a non-empty list")
    if not all(isinstance(value, str | int | float | bool) for value in values):
        raise ValueError(f"accepted_values values must be strings, numbers or booleans: {values!r}")
    return {"values": list(values)}


def _relationship_parameters(params: Mapping[str, Any], column: str, catalog: _Catalog) -> dict[str, Any]:
    """``relationship``: ``to`` a known model or source, ``field`` (default: the column)."""
    _check_keys(params, required=("to",), optional=("field",))
    target, field = params["to"], params.get("field", column)
    if not isinstance(target, str) or not isinstance(field, str):
        raise ValueError("relationship to and field must be strings")
    return {"to": catalog.resolve_name(target), "field": field}


_PARAMETER_CHECKS: dict[str, Callable[[Mapping[str, Any], str, _Catalog], dict[str, Any]]] = {
    "not_null": _no_parameters,
    "unique": _no_parameters,
    "accepted_range": _range_parameters,
    "accepted_values": _values_parameters,
    "relationship": _relationship_parameters,
}


# --------------------------------------------------------------------------- running


def materialize_model(
    con: duckdb.DuckDBPyConnection, model: SqlModel, before_commit: BeforeCommit | None = None
) -> dict[str, Any]:
    """(Re)build a model's table in one transaction; an error leaves the old table intact.

    ``before_commit(con)`` runs inside the transaction, after the new table is built (data
    tests go there): if it raises, the transaction is rolled back and its exception propagates.

    Returns ``{"row_count": int, "columns": [(name, duckdb type), ...]}``. A DuckDB error
    is raised as :class:`SqlModelError` naming the model file.
    """
    table = _table_expression(model.table).sql(dialect=DIALECT)
    schema = exp.to_identifier(model.schema, quoted=True).sql(dialect=DIALECT)

    def checks_then_pause(connection: duckdb.DuckDBPyConnection) -> None:
        if before_commit is not None:
            before_commit(connection)
        pause_point(f"commit:{model.table}")  # tests only: a kill between build and commit

    statements = (f"CREATE SCHEMA IF NOT EXISTS {schema}", f"CREATE OR REPLACE TABLE {table} AS\n{model.sql}")
    try:
        _in_transaction(con, *statements, before_commit=checks_then_pause)
    except duckdb.Error as err:
        raise _error(f"{model.schema}/{model.path.name}", f"materializing {model.table} failed: {err}") from err
    ((row_count,),) = con.sql(f"SELECT count(*) FROM {table}").fetchall()
    columns = [(row[0], row[1]) for row in con.sql(f"DESCRIBE {table}").fetchall()]
    return {"row_count": row_count, "columns": columns}


def _in_transaction(con: duckdb.DuckDBPyConnection, *statements: str, before_commit: BeforeCommit | None = None):
    """Run statements between BEGIN and COMMIT, rolling back on any failure.

    ``before_commit`` errors other than DuckDB's propagate unchanged (after the rollback).
    """
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in statements:
            con.execute(statement)
        if before_commit is not None:
            before_commit(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def run_data_test(con: duckdb.DuckDBPyConnection, test: DataTest, sample: int = 5) -> tuple[int, pl.DataFrame]:
    """Run a data test: the number of failing rows and up to ``sample`` of them."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    failing = _failing_rows(test)
    count_query = exp.select(exp.func("count", exp.Star())).from_(failing.subquery("failing"))
    ((count,),) = con.sql(count_query.sql(dialect=DIALECT)).fetchall()
    rows = con.sql(failing.limit(sample).sql(dialect=DIALECT)).pl()
    return count, rows
