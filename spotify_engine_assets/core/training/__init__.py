"""The one trainer: losses, negative sampling, per-interaction inputs."""
