"""Training efficiency: the project's epoch against the fastest plain PyG script we could write,
and epoch time / memory of the ``trained_model`` asset on the 1x, 10x and 50x worlds.

    .venv/bin/python benchmarks/bench_training_efficiency.py [--scales 1,10,50] [--epochs 2]
        [--rounds 4] [--side-scales 1] [--configs lightgcn,gat_enhanced] [--device auto] [--keep DIR]

For each scale the data stage (generator, SQL models, graph, splits) is materialized once through
Dagster into a data lake (``--keep DIR`` reuses them; not measured).

**Side by side** (one process per world of ``--side-scales``, default the 1x world; the same
graph, split and seed): epochs alternate between

* *project*: the core trainer's epoch (``BaseTrainer._train_epoch``: the code the asset runs,
  without validation) of the project's ``LightGCN`` (128 dims, 3 layers, the default 16 steps an
  epoch, BPR, Adam, l2 on the step's embeddings, negatives that exclude the user's positives);
* *bare*: a plain PyG script of the same model - ``torch_geometric.nn.models.LightGCN`` with
  ``LGConv(normalize=False)`` on a ``torch.sparse`` CSR adjacency normalized once with
  ``gcn_norm``, uniform negatives, the same steps, loss, optimizer and l2;
* *gat same size*: the project's enhanced GAT at LightGCN's size (128 dims, 3 layers, 1 head,
  dropout 0.2, listens attributes), the same trainer epoch.

``--rounds`` epochs of each (after one warm-up each); the medians and their ratios are printed, so
machine noise hits both sides alike. The process takes the ``torch_runtime`` resource's settings
(1 thread, pinned glibc thresholds) as the asset does.

**Scaling**: per scale and config, a fresh subprocess under ``/usr/bin/time -v`` materializes
``listening/trained_model`` (the project's definitions, resources, IO manager, checkpoints) with
``max_epochs = --epochs``; printed: the training seconds of an epoch (``train_seconds`` of the
recorded history, mean after the first), the epoch with validation, the process's user and system
CPU seconds (imports and Dagster included), their ratio, the ratio within the training steps (the
history's ``sys_seconds`` / ``user_seconds`` after the first epoch), minor page faults and the peak
RSS. Growth is reported against the listens
ratio (linear = 1.00x per edge). ``--device cuda`` (or ``auto`` on a machine with a GPU) runs the
asset on the GPU and adds its peak GPU memory (``torch.cuda.max_memory_allocated``); the side by
side always runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALE_KEYS = ("users", "songs", "artists")  # scaled together, as bench_generator's 10x world
SAME_SIZE = {"embedding_dim": 128, "num_layers": 3}
GAT_SAME_SIZE = {"name": "gat_same_size", "model": "gat_enhanced", **SAME_SIZE, "heads": 1, "dropout": 0.2}


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
        if isinstance(partitions, dg.DynamicPartitionsDefinition) and not instance.has_dynamic_partition(
            partitions.name, partition
        ):
            instance.add_dynamic_partitions(partitions.name, [partition])
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        run_config=run_config,
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        raise_on_error=False,
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
    config = run_config()
    config.setdefault("ops", {})["synthetic_world"] = {
        "config": {key: getattr(defaults, key) * scale for key in SCALE_KEYS}
    }
    _materialize(DATA_STAGE, config)


def _training_data(lake: Path):
    """(config registry of the lake, graph, split, message-passing view)."""
    from spotify_engine_assets.core.data.graph import from_payload
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.datasets.listening import DATASET
    from spotify_engine_assets.datasets.listening.graph import message_passing_graph

    store = ArtifactStore(lake / "artifacts")
    data = from_payload(load_torch(store.current(["listening", "graph"]) / "data.pt"))
    split = load_torch(store.current(["listening", "split"]) / "data.pt")[DATASET.registry.get("lightgcn").split]
    return data, split, message_passing_graph(data, split["train"])


def measure_asset(lake: Path, name: str, epochs: int, device: str) -> dict:
    import torch

    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.runner import run_config

    _environment(lake)
    config = run_config()
    config.setdefault("ops", {})["listening__trained_model"] = {"config": {"max_epochs": epochs}}
    config.setdefault("resources", {})["torch_runtime"] = {"config": {"device": device}}
    _materialize(["listening/trained_model"], config, partition=name)
    artifact = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "trained_model"], name) / "data.pt")
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"history": artifact["history"], "gpu_peak_mb": gpu_mb, "device": artifact["provenance"]["device"]}


def bare_lightgcn(view, config):
    """A plain PyG LightGCN training epoch: (model, epoch function). Nothing from the project but the graph."""
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.nn.models import LightGCN

    users, songs = view["user"].num_nodes, view["song"].num_nodes
    listens = view["user", "listens", "song"].edge_index
    edges = torch.cat([torch.stack([listens[0], listens[1] + users]), torch.stack([listens[1] + users, listens[0]])], 1)
    edges, weight = gcn_norm(edges, None, users + songs, add_self_loops=False)
    adj_t = (
        torch.sparse_coo_tensor(edges.flip(0), weight, (users + songs,) * 2, check_invariants=False)
        .coalesce()
        .to_sparse_csr()
    )
    torch.manual_seed(config.seed)
    model = LightGCN(users + songs, config.embedding_dim, config.num_layers, normalize=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.steps_in_epoch(listens.size(1))

    def epoch() -> None:
        for batch in torch.randperm(listens.size(1)).tensor_split(steps):
            user, positive = listens[0, batch], listens[1, batch] + users
            negative = torch.randint(songs, (batch.numel(),)) + users
            embedding = model.get_embedding(adj_t)
            difference = (embedding[user] * (embedding[negative] - embedding[positive])).sum(-1)
            ego = model.embedding.weight
            l2 = (ego[user].pow(2).sum() + ego[positive].pow(2).sum() + ego[negative].pow(2).sum()) / batch.numel()
            loss = F.softplus(difference).mean() + config.l2 * l2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, epoch


def side_by_side(lake: Path, rounds: int) -> dict:
    """Median epoch seconds of the project's LightGCN, the bare PyG LightGCN and the project's
    enhanced GAT at the same size, epochs interleaved."""
    import torch

    from spotify_engine_assets.core.config import parse_config
    from spotify_engine_assets.core.data.graph import num_nodes_of
    from spotify_engine_assets.core.models import build_model
    from spotify_engine_assets.core.training.trainer import SimpleTrainer
    from spotify_engine_assets.datasets.listening import DATASET
    from spotify_engine_assets.datasets.listening.graph import SCHEMA
    from spotify_engine_assets.defs.resources import TorchRuntime

    TorchRuntime().apply()  # the asset's threads and allocator settings, for all three alike
    data, _, view = _training_data(lake)
    lightgcn = DATASET.registry.get("lightgcn")
    if {k: getattr(lightgcn, k) for k in SAME_SIZE} != SAME_SIZE:
        raise SystemExit(f"the registry's lightgcn is not {SAME_SIZE}; update SAME_SIZE")
    runs = {}
    for label, config in (("project", lightgcn), ("gat same size", parse_config(GAT_SAME_SIZE))):
        config = config.model_copy(update={"trainer": "simple"})
        torch.manual_seed(config.seed)
        trainer = SimpleTrainer(build_model(config, SCHEMA, num_nodes_of(data)), view, config)
        runs[label] = trainer._train_epoch
    runs["bare"] = bare_lightgcn(view, lightgcn)[1]
    seconds = {label: [] for label in runs}
    for round_ in range(rounds + 1):
        for label, epoch in runs.items():
            started = time.perf_counter()
            epoch()
            if round_:  # the first round warms up
                seconds[label].append(time.perf_counter() - started)
    return {
        "median": {label: statistics.median(values) for label, values in seconds.items()},
        "epochs": seconds,
        "steps": lightgcn.steps_in_epoch(view["user", "listens", "song"].edge_index.size(1)),
    }


def _child(mode: str, lake: Path, arg: str, epochs: int = 0, timed: bool = False, device: str = "auto") -> dict:
    command = [sys.executable, __file__, "--device", device, "--child", mode, str(lake), arg, str(epochs)]
    if timed:
        command = ["/usr/bin/time", "-v", *command]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} {arg} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if timed:

        def field(label: str) -> float:
            return float(re.search(rf"{re.escape(label)}: ([\d.]+)", done.stderr).group(1))

        result.update(
            user=field("User time (seconds)"),
            sys=field("System time (seconds)"),
            faults=field("Minor (reclaiming a frame) page faults"),
            peak_mb=field("Maximum resident set size (kbytes)") / 1024,
        )
    return result


def _listens(lake: Path) -> int:
    from spotify_engine_assets.core.storage.artifacts import ArtifactStore, load_torch
    from spotify_engine_assets.datasets.listening import DATASET

    split = load_torch(ArtifactStore(lake / "artifacts").current(["listening", "split"]) / "data.pt")
    return int(split[DATASET.registry.get("lightgcn").split]["train"].numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scales", default="1,10,50", help="world sizes as multiples of the default (users, songs, artists)"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="asset epochs per config and scale; the first is a warm-up (>= 2)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="side-by-side epochs of each (after one warm-up)")
    parser.add_argument("--side-scales", default="1", help="worlds to run the side-by-side comparison on")
    parser.add_argument("--configs", default="lightgcn,gat_enhanced")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the data lakes in this folder")
    parser.add_argument(
        "--device", default="auto", help="the torch_runtime device of the asset runs (auto: CUDA when present)"
    )
    parser.add_argument("--child", nargs=4, metavar=("MODE", "LAKE", "ARG", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, lake, arg, epochs = args.child
        if mode == "prepare":
            prepare(Path(lake), int(arg))
            print(json.dumps({}))
        elif mode == "side":
            print(json.dumps(side_by_side(Path(lake), int(arg))))
        else:
            print(json.dumps(measure_asset(Path(lake), arg, int(epochs), args.device)))
        return
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (the first epoch is a warm-up), got {args.epochs}")
    scales = sorted(int(s) for s in args.scales.split(","))
    side_scales = sorted(int(s) for s in args.side_scales.split(","))
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_training_efficiency_"))
    print(f"torch threads 1 (the torch_runtime default); load average at start {os.getloadavg()}", flush=True)
    listens = {}
    for scale in sorted({*side_scales, *scales}):
        lake = root / f"scale_{scale}"
        if not (lake / "artifacts" / "listening" / "split").exists():
            started = time.perf_counter()
            _child("prepare", lake, str(scale))
            print(f"scale {scale}x: data stage {time.perf_counter() - started:.0f} s", flush=True)
        listens[scale] = _listens(lake)

    for scale in side_scales:
        side = _child("side", root / f"scale_{scale}", str(args.rounds))
        median = side["median"]
        print(
            f"\nside by side, {scale}x world ({listens[scale]:,} training listens, {side['steps']} steps an epoch, "
            f"median of {args.rounds} epochs each):"
        )
        for label in ("project", "bare", "gat same size"):
            print(f"  {label:<14} {median[label]:6.2f} s/epoch   epochs {[round(s, 2) for s in side['epochs'][label]]}")
        print(f"  project / bare PyG LightGCN: {median['project'] / median['bare']:.2f}")
        print(
            f"  enhanced GAT / LightGCN at the same size: {median['gat same size'] / median['project']:.2f}", flush=True
        )

    rows = []
    for scale in scales:
        for name in args.configs.split(","):
            result = _child("asset", root / f"scale_{scale}", name, args.epochs, timed=True, device=args.device)
            history = result["history"][1:]
            train = statistics.mean(row["train_seconds"] for row in history)
            total = statistics.mean(row["seconds"] for row in history)
            result["train_sys_share"] = sum(row["sys_seconds"] for row in history) / sum(
                row["user_seconds"] for row in history
            )
            rows.append((name, scale, train, total, result))
            gpu = "" if result["gpu_peak_mb"] is None else f", GPU peak {result['gpu_peak_mb']:.0f} MB"
            print(
                f"  {name} {scale}x on {result['device']}: train {train:.2f} s/epoch ({listens[scale] / train:,.0f} listens/s), "
                f"with validation {total:.2f}, user {result['user']:.0f} s, sys {result['sys']:.0f} s, "
                f"peak {result['peak_mb']:.0f} MB{gpu}",
                flush=True,
            )
    print(
        f"\n{'config':<13} {'size':>5} {'listens':>10} {'train s/ep':>10} {'listens/s':>10} {'s/ep+valid':>10} {'user s':>7} "
        f"{'sys s':>6} {'sys/user':>8} {'train sys/user':>14} {'faults':>10} {'peak MB':>8} {'GPU MB':>7}"
    )
    for name, scale, train, total, r in rows:
        gpu = "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"
        print(
            f"{name:<13} {f'{scale}x':>5} {listens[scale]:>10,} {train:>10.2f} {listens[scale] / train:>10,.0f} {total:>10.2f} "
            f"{r['user']:>7.0f} {r['sys']:>6.1f} {r['sys'] / r['user']:>8.1%} {r['train_sys_share']:>14.1%} {r['faults']:>10,.0f} "
            f"{r['peak_mb']:>8.0f} {gpu:>7}"
        )
    if len(scales) >= 2:
        low = scales[0]
        print(f"\ngrowth per training listen relative to {low}x (1.00 = linear):")
        by = {(r[0], r[1]): r for r in rows}
        for name in args.configs.split(","):
            for scale in scales[1:]:
                edges = listens[scale] / listens[low]
                a, b = by[(name, low)], by[(name, scale)]
                print(
                    f"  {name} {scale}x ({edges:.1f}x listens): train time {b[2] / a[2] / edges:.2f}, "
                    f"with validation {b[3] / a[3] / edges:.2f}, peak RSS {b[4]['peak_mb'] / a[4]['peak_mb'] / edges:.2f}"
                )
    print(f"load average at end: {os.getloadavg()}")
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
