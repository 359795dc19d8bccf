"""spotify-engine: graph-neural-network music recommenders as Dagster software-defined assets."""

import atexit


def _clear_typing_caches() -> None:
    """Drop typing's generic-alias caches at exit.

    Dagster introspects annotations such as ``Callable[[duckdb.DuckDBPyConnection], None]``; typing's caches then keep
    duckdb's nanobind types alive until interpreter teardown, and nanobind prints a page of (harmless) "leaked
    instance" warnings. Clearing the caches first lets the objects be freed normally.
    """
    import typing

    for cleanup in getattr(typing, "_cleanups", ()):
        cleanup()


atexit.register(_clear_typing_caches)
