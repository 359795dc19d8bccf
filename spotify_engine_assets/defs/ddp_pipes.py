"""Multi-process training (``world_size`` > 1) launched through Dagster Pipes.

The ``trained_model`` asset hands :class:`PipesLauncher` to the Dagster-free trainer
(``core/training/distributed.py``, as its ``launcher``): it runs the same torchrun command with
``dg.PipesSubprocessClient``, but with this module as each rank's entry point. Rank 0 opens Dagster
Pipes (``dagster_pipes``, which needs no Dagster in the worker) and sends over it

* its training log (every epoch's loss, validation metrics and learning rate) as log events of the
  Dagster run, as they happen;
* at the end, a materialization report whose metadata the asset adds to its own: ``ddp_backend``,
  ``ddp_world_size``, ``ddp_ranks`` (each rank's pid, host, device and seconds), ``ddp_epoch_loss``
  and ``ddp_fit_seconds``.

The other ranks, and torchrun itself, write to the step's stdout/stderr (Pipes forwards them to
the run's captured logs); a rank that fails fails the launch (torchrun stops the others) and the
step with it. Without Pipes (CLI, benchmarks, a study) the core's plain subprocess launcher runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.training import distributed

WORKER_MODULE = __name__


class PipesLauncher:
    """A :data:`~spotify_engine_assets.core.training.distributed.Launcher` that runs the ranks with
    ``client`` (default ``dg.PipesSubprocessClient()``) in the asset's ``context``; after the launch
    :attr:`metadata` holds what rank 0 reported."""

    def __init__(self, context, client=None) -> None:
        self.context, self.client = context, client
        self.metadata: dict = {}

    def __call__(self, launch: distributed.Launch, log) -> None:
        # the orchestrator side only: the ranks import dagster_pipes alone; the error is not exported by dagster 1.13
        import dagster as dg
        from dagster._core.errors import DagsterPipesExecutionError

        client = self.client or dg.PipesSubprocessClient()
        try:
            invocation = client.run(
                context=self.context,
                command=launch.command(WORKER_MODULE),
                env=launch.env,
                extras={"world_size": launch.world_size, "backend": launch.backend},
            )
        except DagsterPipesExecutionError as error:
            raise RuntimeError(
                f"config {launch.config_name!r}: distributed training failed through Dagster Pipes: "
                f"{error} (the ranks' output is in the step's stdout/stderr)"
            ) from error
        self.metadata = {
            key: value for result in invocation.get_results() for key, value in (result.metadata or {}).items()
        }


def report(summary: dict) -> dict:
    """Rank 0's summary (:func:`distributed.worker`) as materialization metadata (raw values)."""
    return {
        "ddp_backend": summary["backend"],
        "ddp_world_size": summary["world_size"],
        "ddp_ranks": summary["ranks"],
        "ddp_epoch_loss": [round(float(row["loss"]), 6) for row in summary["history"]],
        "ddp_fit_seconds": round(float(summary["fit_seconds"]), 3),
    }


def main(folder: Path) -> None:
    """One rank: rank 0 inside Dagster Pipes (when launched by it), the others plain."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if int(os.environ.get("RANK", "0")) != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        distributed.worker(folder)
        return
    with open_dagster_pipes() as pipes:
        summary = distributed.worker(folder, log=pipes.log.info)
        pipes.report_asset_materialization(metadata=report(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
