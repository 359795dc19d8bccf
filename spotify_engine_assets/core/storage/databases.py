"""Why a connection to a database server failed, in words: one reading of the driver's message
(PostgreSQL through psycopg2 / SQLAlchemy) for the Optuna storages (``core/experiments/hpo.py``)
and the scale-out profile's Dagster instance (``scale/profile.py``)."""

from __future__ import annotations

CREDENTIALS = ("authentication failed", "no password supplied")
UNREACHABLE = ("connection refused", "could not connect", "timeout expired", "too many retries")
MISSING = ("does not exist",)


def _says(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in phrases)


def connection_cause(text: str, server: str = "the server") -> str:
    """The cause a driver's error ``text`` names: rejected credentials, an unreachable server, a
    missing database or role, or (none of those) that the storage cannot be opened."""
    if _says(text, CREDENTIALS):
        return f"{server} rejected the credentials"
    if _says(text, UNREACHABLE):
        return f"{server} is not reachable (is it running?)"
    if _says(text, MISSING):
        return "the database or role does not exist"
    return "cannot open the storage"


def retrying_cannot_fix(text: str) -> bool:
    """Rejected credentials or a missing database or role: a retry would fail the same way."""
    return _says(text, CREDENTIALS + MISSING)
