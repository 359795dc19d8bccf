"""The scale-out profile: PostgreSQL instance storage, the code location as a gRPC server, the
daemon with the QueuedRunCoordinator, backfills as concurrent runs (docs/scaling_out.md)."""
