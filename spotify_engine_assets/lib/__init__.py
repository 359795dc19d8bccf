"""Dagster-free library code shared by the spotify-engine assets."""
