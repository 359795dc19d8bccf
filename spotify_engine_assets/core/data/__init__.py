"""Graph schemas and helpers, splits as index tensors, and the SQL model loader."""
