"""Training efficiency: epoch time and peak memory of the enhanced GAT and LightGCN inside the
``trained_model`` asset versus a bare PyG script of the same model, at the default world size
and at 10x (about 1M listens).

    .venv/bin/python benchmarks/bench_training_efficiency.py [--epochs 3] [--scales 1,10]
        [--configs gat_enhanced,lightgcn] [--keep DIR] [--steps-per-epoch N]

For each scale the data stage (generator, SQL models, graph, splits) is materialized once through
Dagster into a temporary data lake (not measured). Then every measurement runs in a *fresh
subprocess*, so one run's memory never pollutes another's:

* **asset**: ``dg.materialize`` of ``listening/trained_model`` (the project's definitions, resources
  and IO manager, checkpoints every epoch, metadata, provenance) for the config's partition with run
  config ``max_epochs = --epochs`` (op ``listening__trained_model``); epoch seconds come from the
  artifact's recorded history.
* **bare**: the same model class built from the same config, trained by a plain BPR loop (Adam,
  uniform negatives, ReduceLROnPlateau, the validation metrics of the listening protocol -
  Recall@10 (the monitor), NDCG@10, Precision@10, HitRate@10, coverage@10 - every ``eval_every``
  epochs, as the trainer's epoch does) on the same training graph loaded from the lake's files: no
  Dagster, no checkpoints, no metadata.

Cost: an epoch is one full-graph forward and backward per optimizer step of ``batch_size`` edges,
so steps grow with the edges and so does each step: epoch time grows about quadratically in the
edges (the table prints steps and seconds per step). ``--steps-per-epoch N`` trains, in both the
asset and the bare script, a variant ``<config>_spe<N>`` of each config (``steps_per_epoch: N``,
promoted into the lake as a ``listening/trained_model`` partition): an epoch is then N optimizer steps over
all training edges, and its time grows about linearly in the edges (N = 13 is the default-size
world's step count: 52,842 training edges / 4096); ``--steps-per-epoch 13 --scales 1,2,10`` took
25 minutes on 2 cores. ``--library`` adds a third subprocess per row, the core trainer's ``train()``
outside Dagster. ``--pin-malloc`` gives every child the same glibc mmap/trim thresholds
(``PINNED_MALLOC``): without it, whether a process re-faults its 10-30 MB ``[E, d]`` tensors on
every step depends on its allocation history, which made the asset look 1.1-1.3x slower than the
bare script at 2x (1.3-1.9 M minor page faults per library epoch against about 0.5 M per bare
one); pinned, asset / bare was 0.98 there. Tensors above 32 MiB (10x) are mmapped and faulted in
every step either way. ``--scales 1,2`` takes about 10 minutes on a
2-core machine; ``--scales 1,10`` (949,261 listens edges at 10x) about 4 hours (an enhanced-GAT
epoch at 10x is roughly 15 minutes there).

Epoch seconds = mean over the epochs after the first (the first is the warm-up). Peak memory =
the subprocess's RSS high-water mark (``resource.getrusage(...).ru_maxrss``), which includes the
interpreter and imports (Dagster's among them for the asset). torch runs with 1 intra-op thread
in both (the ``torch_runtime`` resource's default; set explicitly in the bare script).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALE_KEYS = ("users", "songs", "artists")  # scaled together, as bench_generator's 10x world


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _environment(lake: Path) -> None:
    from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV

    os.environ[DATA_LAKE_ENV] = str(lake)
    os.environ["DAGSTER_HOME"] = str(lake / "dagster_home")


def _materialize(selection, run_config: dict, partition: str | None = None):
    import dagster as dg

    from spotify_engine_assets.definitions import defs
    from spotify_engine_assets.runner import dagster_home

    dagster_home()
    instance = dg.DagsterInstance.get()
    if partition is not None:
        partitions = defs.resolve_asset_graph().get(dg.AssetKey(["listening", "trained_model"])).partitions_def
        if isinstance(partitions, dg.DynamicPartitionsDefinition) and not instance.has_dynamic_partition(partitions.name, partition):
            instance.add_dynamic_partitions(partitions.name, [partition])
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=selection, run_config=run_config, instance=instance,
        resources=defs.resources, partition_key=partition, raise_on_error=False,
    )
    if not result.success:
        failures = [event.message for event in result.all_events if event.is_failure]
        raise SystemExit(f"materialization of {selection} failed: {failures[:1]}")
    return result


def prepare(lake: Path, scale: int) -> None:
    """Materialize the data stage of a ``scale``x world into ``lake`` (not measured)."""
    from spotify_engine_assets.defs.listening.ingestion import SyntheticWorldConfig
    from spotify_engine_assets.runner import DATA_STAGE, run_config

    _environment(lake)
    defaults = SyntheticWorldConfig()
    world = {key: getattr(defaults, key) * scale for key in SCALE_KEYS}
    config = run_config()
    config.setdefault("ops", {})["synthetic_world"] = {"config": world}
    _materialize(DATA_STAGE, config)


def measure_asset(lake: Path, name: str, epochs: int) -> dict:
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.runner import run_config

    _environment(lake)
    config = run_config()
    config.setdefault("ops", {})["listening__trained_model"] = {"config": {"max_epochs": epochs}}
    _materialize(["listening/trained_model"], config, partition=name)
    artifact = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "trained_model"], name) / "data.pt")
    return {"epoch_seconds": [row["seconds"] for row in artifact["history"]], "peak_mb": _peak_mb()}


def measure_library(lake: Path, name: str, epochs: int) -> dict:
    """The project's ``train()`` (core/training/trainer.py, advanced trainer) on the same files as the
    bare script, outside Dagster and without checkpoints: separates the library's cost from the asset's."""
    import torch

    from spotify_engine_assets.core.data.graph import from_payload, num_nodes_of
    from spotify_engine_assets.core.models import build_model
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.core.training.trainer import train
    from spotify_engine_assets.datasets.listening import DATASET
    from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, message_passing_graph

    torch.set_num_threads(1)
    store = ArtifactStore(lake / "artifacts")
    config = _config(lake, name)
    data = from_payload(load_torch(store.current(["listening", "graph"]) / "data.pt"))
    split = load_torch(store.current(["listening", "split"]) / "data.pt")[config.split]
    view = message_passing_graph(data, split["train"])
    result = train(build_model(config, SCHEMA, num_nodes_of(data)), view, data[LISTENS].edge_index[:, split["valid"]], config,
                   max_epochs=epochs, protocol=DATASET.protocol.for_graph(data))
    return {"epoch_seconds": [row["seconds"] for row in result.history], "peak_mb": _peak_mb()}


def measure_bare(lake: Path, name: str, epochs: int) -> dict:
    """A plain PyG training script of the config's model: no Dagster, checkpoints or metadata."""
    import torch
    import torch.nn.functional as F

    from spotify_engine_assets.core.data.graph import from_payload
    from spotify_engine_assets.core.models.gat import GenreAwareGAT
    from spotify_engine_assets.core.models.lightgcn import LightGCN
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, message_passing_graph

    torch.set_num_threads(1)
    store = ArtifactStore(lake / "artifacts")
    config = _config(lake, name)
    data = from_payload(load_torch(store.current(["listening", "graph"]) / "data.pt"))
    split = load_torch(store.current(["listening", "split"]) / "data.pt")[config.split]
    view = message_passing_graph(data, split["train"])
    train_pairs = view[LISTENS].edge_index
    valid_pairs = data[LISTENS].edge_index[:, split["valid"]]
    num_nodes = {t: int(data[t].num_nodes) for t in data.node_types}
    num_users, num_songs = num_nodes["user"], num_nodes["song"]

    torch.manual_seed(config.seed)
    if config.model == "lightgcn":
        model = LightGCN(config, SCHEMA, num_nodes)
    elif config.model == "gat_enhanced":
        model = GenreAwareGAT(config, SCHEMA, num_nodes)
    else:
        raise SystemExit(f"bare script: config {name!r} has model {config.model!r}; only lightgcn and gat_enhanced")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience)
        if config.lr_patience is not None
        else None
    )
    # the listening protocol's validation metrics at 10 with each user's training songs masked, as
    # every trainer validation does: Recall (the monitor the scheduler steps on), NDCG, Precision,
    # HitRate (PyG's definitions, means over users with a validation song) and catalogue coverage
    k = 10
    valid_users, relevant_count = torch.unique(valid_pairs[0], return_counts=True)
    valid_keys = valid_pairs[0] * num_songs + valid_pairs[1]
    row = torch.full((num_users,), -1, dtype=torch.long)
    row[valid_users] = torch.arange(valid_users.numel())
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float))
    ideal = discount.cumsum(0)[relevant_count.clamp(max=k) - 1]
    seconds = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        for batch in _bare_batches(torch.randperm(train_pairs.size(1)), config):
            users, positives = train_pairs[0, batch], train_pairs[1, batch]
            negatives = torch.randint(num_songs, users.shape)
            user_emb, song_emb = model.encode(view)[:2]
            difference = (user_emb[users] * (song_emb[negatives] - song_emb[positives])).sum(-1)
            loss = F.softplus(difference).mean() + config.l2 * model.ego_l2(users, torch.cat([positives, negatives]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % config.eval_every == 0 or epoch == epochs:
            model.eval()
            with torch.no_grad():
                user_emb, song_emb = model.encode(view)[:2]
                hits = torch.zeros(valid_users.numel())
                dcg = torch.zeros(valid_users.numel())
                covered = torch.zeros(num_songs, dtype=torch.bool)
                for start in range(0, valid_users.numel(), 2048):
                    chunk = valid_users[start : start + 2048]
                    scores = user_emb[chunk] @ song_emb.T
                    known = (row[train_pairs[0]] >= start) & (row[train_pairs[0]] < start + chunk.numel())
                    scores[row[train_pairs[0][known]] - start, train_pairs[1][known]] = float("-inf")
                    top = scores.topk(k, dim=1).indices
                    relevant = torch.isin(chunk[:, None] * num_songs + top, valid_keys).float()
                    hits[start : start + chunk.numel()] = relevant.sum(1)
                    dcg[start : start + chunk.numel()] = (relevant * discount).sum(1)
                    covered[top.flatten()] = True
                recall = float((hits / relevant_count).mean())
                metrics = {"recall@10": recall, "ndcg@10": float((dcg / ideal).mean()), "precision@10": float((hits / k).mean()),
                           "hit_rate@10": float((hits > 0).float().mean()), "coverage@10": float(covered.float().mean())}
            if scheduler is not None:
                scheduler.step(metrics["recall@10"])
        seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": seconds, "peak_mb": _peak_mb()}


def _bare_batches(order, config) -> tuple:
    """The bare loop's optimizer steps: chunks of batch_size, or ``steps_per_epoch`` near-equal chunks."""
    if config.steps_per_epoch is None:
        return order.split(config.batch_size)
    steps = config.steps_in_epoch(order.numel())
    return order.tensor_split(steps) if steps else ()


def _config(lake: Path, name: str):
    """``name`` from models.yaml or the lake's promoted configs (where :func:`variant` writes)."""
    from spotify_engine_assets.datasets.listening import DATASET

    return DATASET.registry.get(name, DATASET.registry.full(lake))


def variant(lake: Path, name: str, steps_per_epoch: int | None) -> str:
    """``name`` itself, or with ``steps_per_epoch`` a copy ``<name>_spe<N>`` (batch_size and
    grad_accumulation back at their defaults, which steps_per_epoch excludes) promoted into the
    lake as a partition of ``listening/trained_model``, so the asset and the bare script train the same config."""
    if steps_per_epoch is None:
        return name
    from datetime import datetime, timezone

    from spotify_engine_assets.core.config import parse_config
    from spotify_engine_assets.core.registry import PromotionSource
    from spotify_engine_assets.datasets.listening import DATASET

    base = _config(lake, name)
    settings = {**base.model_dump(), "name": f"{name}_spe{steps_per_epoch}", "steps_per_epoch": steps_per_epoch}
    for field in ("batch_size", "grad_accumulation"):
        settings[field] = type(base).model_fields[field].default
    settings["description"] = f"{name} with steps_per_epoch {steps_per_epoch} (bench_training_efficiency.py)"
    config = parse_config(settings)
    source = PromotionSource(family=base.model, study_name="bench_training_efficiency", trial=0, objective="none",
                             value=0.0, storage="none", promoted_at=datetime.now(timezone.utc).isoformat())
    DATASET.registry.write_promoted(config, source, lake)
    return config.name


# glibc malloc serves a block above its mmap threshold with a fresh mmap (zeroed pages, one page
# fault per 4 KiB on first touch) and raises that threshold (up to 32 MiB) only after freeing such a
# block, trimming the heap top above twice the threshold: whether a process's [E, d] tensors are
# re-faulted every step depends on its allocation history. --pin-malloc fixes both for every child.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}


def _child(*args: str, pin_malloc: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(PINNED_MALLOC if pin_malloc else {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _edges(lake: Path) -> int:
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.datasets.listening.graph import LISTENS

    payload = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "graph"]) / "data.pt")
    return int(payload[LISTENS]["edge_index"].size(1))


def _steps_per_epoch(lake: Path, name: str) -> int:
    """Optimizer steps of one epoch (``TrainableConfig.steps_in_epoch`` of the training edges)."""
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch

    config = _config(lake, name)
    split = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "split"]) / "data.pt")[config.split]
    return config.steps_in_epoch(split["train"].numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is a warm-up (>= 2)")
    parser.add_argument("--scales", default="1,10", help="world sizes as multiples of the default (users, songs, artists)")
    parser.add_argument("--configs", default="gat_enhanced,lightgcn")
    parser.add_argument("--pin-malloc", action="store_true",
                        help=f"run the measured children with {' '.join(f'{k}={v}' for k, v in PINNED_MALLOC.items())}: "
                        "the same glibc mmap/trim thresholds in every process (see PINNED_MALLOC)")
    parser.add_argument("--library", action="store_true",
                        help="also time the library's train() outside Dagster (a third subprocess per row)")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the data lakes in this folder")
    parser.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                        help="train variants of the configs with steps_per_epoch N (asset and bare alike): an epoch "
                        "is N optimizer steps over all training edges, so its cost grows linearly in the edges")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "LAKE", "ARG", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, lake, arg, epochs = args.child
        if mode == "prepare":
            prepare(Path(lake), int(arg))
            print(json.dumps({"edges": _edges(Path(lake))}))
        else:
            measure = {"asset": measure_asset, "bare": measure_bare, "library": measure_library}[mode]
            print(json.dumps(measure(Path(lake), arg, int(epochs))))
        return
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is a warm-up), got {args.epochs}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    scales = [int(s) for s in args.scales.split(",")]
    configs = args.configs.split(",")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_training_efficiency_"))
    print(f"torch threads: 1 (asset: torch_runtime default; bare: set explicitly); epochs {args.epochs}, first dropped")
    print(f"load average at start: {os.getloadavg()}; malloc pinned: {args.pin_malloc}", flush=True)
    rows = []
    edges = {}
    for scale in scales:
        lake = root / f"scale_{scale}"
        if not (lake / "artifacts" / "listening" / "split").exists():
            started = time.perf_counter()
            edges[scale] = _child("prepare", str(lake), str(scale), "0")["edges"]
            print(f"scale {scale}x: data stage {time.perf_counter() - started:.0f} s", flush=True)
        else:
            edges[scale] = _edges(lake)
        print(f"scale {scale}x: {edges[scale]:,} listens edges", flush=True)
        for base_name in configs:
            name = variant(lake, base_name, args.steps_per_epoch)
            measured = {}
            for mode in ("asset", "bare", "library") if args.library else ("asset", "bare"):
                result = _child(mode, str(lake), name, str(args.epochs), pin_malloc=args.pin_malloc)
                steady = result["epoch_seconds"][1:]
                measured[mode] = (sum(steady) / len(steady), result["peak_mb"])
                print(f"  {name} {mode}: epochs {[round(s, 2) for s in result['epoch_seconds']]} s, "
                      f"peak {result['peak_mb']:.0f} MB, load average {os.getloadavg()[0]:.2f}", flush=True)
            rows.append((name, scale, edges[scale], *measured["asset"], *measured["bare"], _steps_per_epoch(lake, name),
                         measured.get("library", (float("nan"),))[0]))
    print()
    width = max(13, *(len(r[0]) for r in rows))
    print(f"{'model':<{width}} {'size':>5} {'edges':>9} {'epoch s asset':>13} {'epoch s bare':>12} {'ratio':>6} "
          f"{'peak MB asset':>13} {'peak MB bare':>12} {'steps':>6} {'s/step asset':>12}"
          + (f" {'epoch s library':>15} {'lib/bare':>8}" if args.library else ""))
    for name, scale, n_edges, asset_s, asset_mb, bare_s, bare_mb, steps, library_s in rows:
        print(f"{name:<{width}} {f'{scale}x':>5} {n_edges:>9,} {asset_s:>13.2f} {bare_s:>12.2f} {asset_s / bare_s:>6.2f} "
              f"{asset_mb:>13.0f} {bare_mb:>12.0f} {steps:>6} {asset_s / steps:>12.3f}"
              + (f" {library_s:>15.2f} {library_s / bare_s:>8.2f}" if args.library else ""))
    if len(scales) >= 2:
        low, high = min(scales), max(scales)
        how = ("a fixed number of steps, so epoch time grows with the edges" if args.steps_per_epoch else
               "one full-graph forward and backward per step of batch_size edges, so epoch time grows with steps x edges")
        print(f"\ngrowth {high}x / {low}x (edge ratio {edges[high] / edges[low]:.2f}); an epoch is {how}:")
        by = {(r[0], r[1]): r for r in rows}
        for name in dict.fromkeys(r[0] for r in rows):
            a, b = by[(name, low)], by[(name, high)]
            print(f"  {name:<{width}} epoch s asset {b[3] / a[3]:.2f}x, bare {b[5] / a[5]:.2f}x; "
                  f"s/step asset {(b[3] / b[7]) / (a[3] / a[7]):.2f}x; "
                  f"peak MB asset {b[4] / a[4]:.2f}x, bare {b[6] / a[6]:.2f}x")
    print(f"load average at end: {os.getloadavg()}")
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
