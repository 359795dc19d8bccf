"""Dagster definitions by domain; the composition root (``definitions.py``) gathers them."""
