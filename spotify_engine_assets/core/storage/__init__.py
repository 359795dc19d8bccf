"""Artifacts written atomically and versioned, and where the project's files live."""
