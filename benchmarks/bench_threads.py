"""Training-epoch time with 1 and 2 torch threads on the default synthetic data.

    .venv/bin/python benchmarks/bench_threads.py [--epochs 3] [--configs lightgcn,gat_enhanced]

Backs the default of the ``torch_runtime`` resource (1 thread). Prints seconds per epoch.
"""

import argparse
import time

import torch

from spotify_engine_assets.lib.configs import get_config
from spotify_engine_assets.lib.generator import GeneratorSettings, generate_world
from spotify_engine_assets.lib.graph import LISTENS, graph_from_world, message_passing_graph
from spotify_engine_assets.lib.splits import SplitSettings, labels_to_indices, random_split
from spotify_engine_assets.lib.training import build_model, num_nodes_of, train


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
        config = get_config(name)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = build_model(config, num_nodes_of(data))
            started = time.perf_counter()
            result = train(model, view, valid, config, max_epochs=args.epochs)
            print(f"{name:<14} {threads:>7} {(time.perf_counter() - started) / result.epochs_run:8.2f}")


if __name__ == "__main__":
    main()
