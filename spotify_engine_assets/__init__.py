"""spotify-engine."""
