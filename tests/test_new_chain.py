"""A fourth chain built in a fixture: only its loader, its SQL and its protocol are written here;
the chain factory gives it every asset the three shipped chains have (registry, trained models,
metric reports with their gates, comparison, experiments, A/B tests, champion, studies), and the
models, trainer, evaluation and reports of the core run on it unchanged."""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.data.graph import Schema, training_view
from spotify_engine_assets.core.data.splits import labels_to_indices
from spotify_engine_assets.core.data.sqlmodels import load_sql_project
from spotify_engine_assets.core.dataset import Dataset, split_violations
from spotify_engine_assets.core.evaluation.protocol import LinkPrediction
from spotify_engine_assets.core.registry import Registry
from spotify_engine_assets.core.storage.artifacts import load_torch
from spotify_engine_assets.defs.chain import Chain, chain_definitions, data_assets, register_configs
from spotify_engine_assets.defs.resources import DUCKDB_POOL, DataLake, LakeIOManager, TorchRuntime, Warehouse
from spotify_engine_assets.defs.sql import build_sql_definitions

PLAYS = ("user", "plays", "item")
TAGGED = ("item", "tagged", "tag")
SCHEMA = Schema(interaction=PLAYS, categories={"tag": TAGGED})
REGISTRY = """\
most_popular:
  model: most_popular
itemknn:
  model: itemknn
  shrink: 2
lightgcn:
  model: lightgcn
  embedding_dim: 16
  num_layers: 2
  lr: 0.02
  max_epochs: 15
  patience: 5
  batch_size: 256
gat_basic:
  model: gat_basic
  embedding_dim: 16
  lr: 0.02
  max_epochs: 15
  batch_size: 256
"""
SPACES = """\
itemknn:
  base: itemknn
  params:
    shrink: {type: float, low: 0.0, high: 20.0}
"""
SQL = {
    "interactions.sql": "SELECT user_id, item_id, count(*) AS plays FROM raw_toy.plays GROUP BY user_id, item_id",
    "item_tags.sql": "SELECT DISTINCT item_id, tag FROM raw_toy.items",
    "schema.yml": "models:\n  interactions:\n    user_id: [not_null]\n    plays:\n      - accepted_range: {min: 1}\n",
}


# ------------------------------------------------------------------------------- the chain


def toy_frames(seed: int = 0, users: int = 60, items: int = 80, tags: int = 6) -> dict[str, pl.DataFrame]:
    """Users who play items of their favourite tag (so a model has something to learn)."""
    rng = np.random.default_rng(seed)
    item_tag = rng.integers(0, tags, items)
    rows = []
    for user in range(users):
        favourite = rng.integers(0, tags)
        pool = np.flatnonzero(item_tag == favourite)
        for item in rng.choice(pool, size=min(8, pool.size), replace=False):
            rows += [(user, int(item))] * int(rng.integers(1, 4))
        rows += [(user, int(item)) for item in rng.integers(0, items, 2)]
    plays = pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")
    return {"plays": plays, "items": pl.DataFrame({"item_id": np.arange(items), "tag": [f"t{t}" for t in item_tag]})}


def build_graph(tables: dict[str, pl.DataFrame]) -> HeteroData:
    """Users and items of the toy warehouse: user -plays-> item, item -tagged-> tag."""
    interactions, tags = tables["toy.interactions"].sort("user_id", "item_id"), tables["toy.item_tags"]
    tag_ids = sorted(set(tags["tag"]))
    data = HeteroData()
    data["user"].num_nodes = int(interactions["user_id"].max()) + 1
    data["item"].num_nodes = int(tags["item_id"].max()) + 1
    data["tag"].num_nodes = len(tag_ids)
    data[PLAYS].edge_index = torch.tensor(interactions.select("user_id", "item_id").to_numpy().T.copy())
    data[PLAYS].play_count = torch.tensor(interactions["plays"].to_numpy(), dtype=torch.float32)
    data[TAGGED].edge_index = torch.tensor([tags["item_id"].to_list(), [tag_ids.index(t) for t in tags["tag"]]])
    return data


def build_split(data: HeteroData) -> dict:
    """Per user, a seeded fifth of their items for validation and one for test."""
    users = data[PLAYS].edge_index[0].numpy()
    rng = np.random.default_rng(0)
    draw = rng.random(users.size)
    labels = np.where(draw < 0.2, 1, np.where(draw < 0.4, 2, 0))
    return {"settings": {"seed": 0}, "random": labels_to_indices(labels)}


@pytest.fixture(scope="module")
def toy_chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    (root / "configs").mkdir()
    (root / "configs" / "models.yaml").write_text(REGISTRY)
    (root / "configs" / "search_spaces.yaml").write_text(SPACES)
    (root / "sql" / "toy").mkdir(parents=True)
    for name, text in SQL.items():
        (root / "sql" / "toy" / name).write_text(text)
    dataset = Dataset(
        name="toy",
        schema=SCHEMA,
        protocol=LinkPrediction(primary="ndcg@10", monitor="recall@10"),
        registry=Registry("toy", root / "configs" / "models.yaml", ("random",)),
        view=lambda data, train, heldout=None: training_view(data, SCHEMA, train),
        split_violations=lambda data, splits: split_violations(data, splits, SCHEMA),
    )
    chain = Chain(dataset)
    frames = toy_frames()

    # the loader: the toy files into the warehouse schema raw_toy
    @dg.multi_asset(specs=[dg.AssetSpec(["raw_toy", t], group_name="toy_ingestion") for t in frames], pool=DUCKDB_POOL)
    def toy_raw(warehouse: Warehouse):
        with warehouse.connect() as con:
            con.execute("CREATE SCHEMA IF NOT EXISTS raw_toy")
            for table, frame in frames.items():
                con.register("frame", frame)
                con.execute(f"CREATE OR REPLACE TABLE raw_toy.{table} AS SELECT * FROM frame")
                con.unregister("frame")
        for table in frames:
            yield dg.MaterializeResult(asset_key=["raw_toy", table])

    sql = build_sql_definitions(load_sql_project(root / "sql", [f"raw_toy.{t}" for t in frames]))  # group "sql"
    lake = DataLake(root=str(root / "lake"))
    defs = dg.Definitions.merge(
        sql,
        dg.Definitions(
            assets=[toy_raw, *data_assets(chain, ("toy.interactions", "toy.item_tags"), build_graph, build_split)]
        ),
        chain_definitions(chain),
        dg.Definitions(
            resources={
                "lake": lake,
                "warehouse": Warehouse(lake=lake),
                "torch_runtime": TorchRuntime(),
                "io_manager": LakeIOManager(lake=lake),
            }
        ),
    )
    return chain, defs, lake


def test_a_fourth_chain_gets_every_asset_of_the_factory(toy_chain):
    chain, defs, _ = toy_chain
    keys = {key.to_user_string() for asset in defs.assets for key in asset.keys}
    expected = {
        "graph",
        "split",
        "model_registry",
        "trained_model",
        "metric_report",
        "model_comparison",
        "experiments",
        "ab_tests",
        "champion",
        "hpo_study",
        "recommendations",
    }
    assert {f"toy/{name}" for name in expected} <= keys
    checks = {key.name for check in defs.asset_checks for key in check.check_keys}
    checks |= {spec.name for asset in defs.assets for spec in asset.check_specs}
    assert {"leakage_free", "quality_gate", "fairness_gap", "champion_gate"} <= checks


def test_a_fourth_chain_trains_evaluates_and_compares_through_the_factory(toy_chain):
    chain, defs, lake = toy_chain
    instance = dg.DagsterInstance.ephemeral()
    assets = [*defs.assets, *defs.asset_checks]

    def run(selection, partition=None, config=None):
        return dg.materialize(
            assets,
            selection=selection,
            instance=instance,
            resources=defs.resources,
            partition_key=partition,
            run_config=config or {},
            raise_on_error=False,
        )

    data = run(
        dg.AssetSelection.groups("toy_ingestion", "sql", "toy_graph")
        | dg.AssetSelection.assets(["toy", "model_registry"])
    )
    assert data.success, [e.message for e in data.all_events if e.is_failure]
    assert all(e.passed for e in data.get_asset_check_evaluations())  # leakage_free and the SQL data test
    assert sorted(instance.get_dynamic_partitions("toy_configs")) == [
        "gat_basic",
        "itemknn",
        "lightgcn",
        "most_popular",
    ]

    for config in ("most_popular", "itemknn", "lightgcn", "gat_basic"):
        result = run(dg.AssetSelection.assets(["toy", "trained_model"], ["toy", "metric_report"]), partition=config)
        assert result.success, (config, [e.message for e in result.all_events if e.is_failure])
        gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
        assert gate and gate[0].passed, (config, gate[0].metadata if gate else None)
    comparison = run(
        dg.AssetSelection.assets(*(["toy", n] for n in ("model_comparison", "experiments", "ab_tests", "champion")))
    )
    assert comparison.success

    table = pl.read_csv(lake.path / "reports" / "toy" / "model_comparison.csv")
    assert sorted(table["config"]) == ["gat_basic", "itemknn", "lightgcn", "most_popular"]
    ndcg = dict(zip(table["config"], table["ndcg@10"]))
    assert min(ndcg["itemknn"], ndcg["lightgcn"]) > ndcg["most_popular"]  # the models learnt the tag structure
    report = load_torch(lake.artifacts.current(["toy", "metric_report"], "lightgcn") / "data.pt")
    assert report["primary"] == "ndcg@10" and report["chain"] == "toy"
    assert "ild_tag@10" in report["metrics"]  # the chain's item category drives the diversity metric
    trained = load_torch(lake.artifacts.current(["toy", "trained_model"], "lightgcn") / "data.pt")
    assert trained["monitor"] == "recall@10" and trained["best_epoch"] >= 1
    # batch recommendations of a chain without genres: by the model alone (embeddings, or ItemKNN's own scores)
    graph = load_torch(lake.artifacts.current(["toy", "graph"]) / "data.pt")
    known = pl.DataFrame(
        {"user_id": graph[PLAYS]["edge_index"][0].numpy(), "item_id": graph[PLAYS]["edge_index"][1].numpy()}
    )
    for config in ("lightgcn", "itemknn"):
        assert trained["serving"]["genre_prior"] == 0.0
        result = run(
            dg.AssetSelection.assets(["toy", "recommendations"]),
            partition=config,
            config={"ops": {"toy__recommendations": {"config": {"k": 3}}}},
        )
        assert result.success, (config, [e.message for e in result.all_events if e.is_failure])
        frame = pl.read_parquet(lake.artifacts.current(["toy", "recommendations"], config) / "data.parquet")
        assert frame.columns == ["user_id", "rank", "item_id", "score", "model_score"]
        assert frame.join(known, on=["user_id", "item_id"]).is_empty()
        by_user = frame.sort("user_id", "rank").group_by("user_id", maintain_order=True).agg("rank", "model_score")
        assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in by_user["rank"].to_list())
        assert all(scores == sorted(scores, reverse=True) for scores in by_user["model_score"].to_list())

    study = run(
        dg.AssetSelection.assets(["toy", "hpo_study"]),
        partition="itemknn",
        config={"ops": {"toy__hpo_study": {"config": {"n_trials": 3, "promote": True}}}},
    )
    assert study.success, [e.message for e in study.all_events if e.is_failure]
    assert "hpo_itemknn" in chain.dataset.registry.full(lake.path)  # promotion works for the new chain too
    register_configs(chain, instance, lake.path)
    promoted = run(
        dg.AssetSelection.assets(["toy", "trained_model"], ["toy", "metric_report"]), partition="hpo_itemknn"
    )
    assert promoted.success
