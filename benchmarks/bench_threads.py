"""Training-epoch time with 1 and 2 torch threads on the default synthetic data.

    .venv/bin/python benchmarks/bench_threads.py [--epochs 3] [--configs lightgcn,gat_enhanced]

Backs the default of the ``torch_runtime`` resource (1 thread). Prints seconds per epoch.
"""

import argparse
import time

import torch

from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.models import build_model
from spotify_engine_assets.core.training.trainer import train
from spotify_engine_assets.datasets.listening import DATASET
from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world
from spotify_engine_assets.datasets.listening.graph import LISTENS, SCHEMA, graph_from_world, message_passing_graph
from spotify_engine_assets.datasets.listening.splits import SplitSettings, random_split


def default_graph():
    return graph_from_world(generate_world(GeneratorSettings()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--configs", default="lightgcn,gat_enhanced")
    args = parser.parse_args()
    data = default_graph()
    parts = labels_to_indices(random_split(data[LISTENS].edge_index[0].numpy(), SplitSettings()))
    view = message_passing_graph(data, parts["train"])
    valid = data[LISTENS].edge_index[:, parts["valid"]]
    print(f"{'config':<14} {'threads':>7} {'s/epoch':>8}")
    for name in args.configs.split(","):
        config = DATASET.registry.get(name)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = build_model(config, SCHEMA, num_nodes_of(data))
            started = time.perf_counter()
            result = train(model, view, valid, config, max_epochs=args.epochs)
            print(f"{name:<14} {threads:>7} {(time.perf_counter() - started) / result.epochs_run:8.2f}")


if __name__ == "__main__":
    main()
