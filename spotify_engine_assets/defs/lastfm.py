"""Last.fm HetRec 2K end to end: raw files -> DuckDB -> SQL marts -> graph -> fixed split ->
trained models (partitioned by ``configs/lastfm_models.yaml``) -> metric reports -> comparison.

* ``raw_lastfm/*`` (group ``lastfm_ingestion``): the five ``.dat`` files and the split's two
  ``.tsv`` files loaded into the warehouse schema ``raw_lastfm`` in one transaction. Folders are
  run config (defaults: ``../shared/data/...`` relative to the repository root).
* ``lastfm/*`` (group ``lastfm_sql``): the SQL models of ``dbt_like_sql/lastfm/`` (loaded with the
  main SQL project; ``raw_lastfm.*`` are registered sources in ``defs/sql_models.py``).
* ``lastfm_graph``: the indexed dataset and the message-passing ``HeteroData`` of the training
  part (user -listens-> artist, artist -tagged-> tag, user -friend- user, reverse relations).
* ``lastfm_split``: the fixed split as index pairs plus the validation cut of its training part;
  blocking checks: parts disjoint, validation inside train, no test pair in message passing.
* ``lastfm_trained_model`` (partition = config): fits on all of train.tsv; stores the config,
  training seconds, history and each user's top-100 artists (training artists masked).
* ``lastfm_metric_report`` (partition = config): test Recall/NDCG@10/20, coverage@20.
* ``lastfm_model_comparison``: one table of every materialized report.
"""


import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ..lib import lastfm as lastfm_lib
from ..lib import lastfm_baselines, lastfm_models, lastfm_pipeline, lastfm_training
from ..lib.paths import source_version
from ..lib.plots import frame_markdown
from .resources import DUCKDB_POOL, DataLake, TorchRuntime, Warehouse

RAW_SCHEMA, RAW_TABLES = lastfm_lib.RAW_SCHEMA, lastfm_lib.RAW_TABLES
MART_TABLES = ("artists", "tags", "listens", "tag_assignments", "friendships", "split_pairs")
TOP_K = 100
ID_FIELDS = ("user_ids", "artist_ids", "tag_ids")
CODE_VERSION = source_version(lastfm_lib, lastfm_baselines, lastfm_models, lastfm_pipeline, lastfm_training)

CONFIG_NAMES = tuple(lastfm_pipeline.load_registry())
config_partitions = dg.StaticPartitionsDefinition(list(CONFIG_NAMES))


class LastfmSourceConfig(dg.Config):
    data_dir: str = Field(default="", description="Folder of the .dat files; empty = ../shared/data/lastfm2k.")
    split_dir: str = Field(default="", description="Folder of train.tsv/test.tsv; empty = ../shared/data/lastfm2k_split_seed0.")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            [RAW_SCHEMA, t],
            description=f"Last.fm 2K `{t}` as loaded from its file (DuckDB table `{RAW_SCHEMA}.{t}`).",
            group_name="lastfm_ingestion",
            kinds={"duckdb"},
        )
        for t in RAW_TABLES
    ],
    pool=DUCKDB_POOL,
    code_version=source_version(lastfm_lib),
)
def lastfm_raw(context: dg.AssetExecutionContext, config: LastfmSourceConfig, warehouse: Warehouse):
    """Load the Last.fm 2K files (tags files decoded from Latin-1) and the fixed split into ``raw_lastfm``."""
    from pathlib import Path

    data_dir = Path(config.data_dir).expanduser().resolve() if config.data_dir else lastfm_lib.data_dir()
    split_dir = Path(config.split_dir).expanduser().resolve() if config.split_dir else lastfm_lib.split_dir()
    if not lastfm_lib.available(data_dir, split_dir):
        raise dg.Failure(f"Last.fm 2K files not found under {data_dir} and {split_dir} (see ../shared/data/README.md)")
    frames = lastfm_lib.read_raw(data_dir)
    frames.update({f"split_{k}": v for k, v in lastfm_lib.read_split(split_dir).items()})
    with warehouse.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{RAW_SCHEMA}"')
            for table in RAW_TABLES:
                con.register("frame", frames[table])
                con.execute(f'CREATE OR REPLACE TABLE "{RAW_SCHEMA}"."{table}" AS SELECT * FROM frame')
                con.unregister("frame")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    for table in RAW_TABLES:
        yield dg.MaterializeResult(
            asset_key=[RAW_SCHEMA, table],
            metadata={"dagster/row_count": frames[table].height, "preview": dg.MetadataValue.md(frame_markdown(frames[table], max_rows=5))},
        )


def _dataset(warehouse: Warehouse) -> lastfm_lib.LastfmData:
    marts = {t: warehouse.read_table(f"lastfm.{t}") for t in MART_TABLES}
    raw = {
        "artists": marts["artists"].select(pl.col("artist_id").alias("id"), "name"),
        "user_artists": marts["listens"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("plays").alias("weight")
        ),
        "tags": marts["tags"].select(pl.col("tag_id").alias("tagID"), pl.col("tag").alias("tagValue")),
        "user_taggedartists": marts["tag_assignments"].select(
            pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), pl.col("tag_id").alias("tagID")
        ),
        "user_friends": marts["friendships"].select(pl.col("user_id").alias("userID"), pl.col("friend_id").alias("friendID")),
    }
    pairs = marts["split_pairs"].select(pl.col("user_id").alias("userID"), pl.col("artist_id").alias("artistID"), "part")
    split = {part: pairs.filter(pl.col("part") == part).drop("part") for part in ("train", "test")}
    return lastfm_lib.build_dataset(raw, split)


@dg.asset(
    key="lastfm_graph",
    deps=[dg.AssetKey(["lastfm", t]) for t in MART_TABLES],
    group_name="lastfm",
    kinds={"pytorch", "pyg"},
    pool=DUCKDB_POOL,
    code_version=CODE_VERSION,
)
def lastfm_graph(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.Output[dict]:
    """The indexed Last.fm dataset and the training part's message-passing ``HeteroData``."""
    data = _dataset(warehouse)
    graph = lastfm_lib.build_graph(data, data.train, data.test)
    # numpy id arrays as tensors: artifacts are loaded back with torch.load(weights_only=True)
    dataset = {k: torch.from_numpy(v.astype("int64")) if k in ID_FIELDS else v for k, v in vars(data).items()}
    payload = {"dataset": dataset, "graph": graph.to_dict()}
    metadata = {f"nodes/{t}": int(graph[t].num_nodes) for t in graph.node_types}
    metadata.update({f"edges/{'__'.join(e)}": int(graph[e].edge_index.size(1)) for e in graph.edge_types})
    return dg.Output(payload, metadata=metadata)


def dataset_of(payload: dict) -> lastfm_lib.LastfmData:
    fields = payload["dataset"]
    return lastfm_lib.LastfmData(**{k: fields[k].numpy() if k in ID_FIELDS else fields[k] for k in fields})


@dg.asset(key="lastfm_split", group_name="lastfm", kinds={"pytorch"}, code_version=CODE_VERSION)
def lastfm_split(context: dg.AssetExecutionContext, lastfm_graph: dict) -> dg.Output[dict]:
    """The fixed split (``train``/``test`` index pairs) and the validation cut of ``train``
    (``fit``/``valid``, the split's own recipe with seed 0) used for tuning."""
    data = dataset_of(lastfm_graph)
    fit, valid = lastfm_lib.validation_split(data.train)
    parts = {"train": data.train, "test": data.test, "fit": fit, "valid": valid}
    return dg.Output(parts, metadata={part: int(pairs.size(1)) for part, pairs in parts.items()})


def _keys(pairs: torch.Tensor, num_items: int) -> torch.Tensor:
    return pairs[0] * num_items + pairs[1]


@dg.asset_check(
    asset=lastfm_split,
    additional_ins={"lastfm_graph": dg.AssetIn("lastfm_graph")},
    blocking=True,
    description="train/test disjoint; fit/valid partition train; the graph's listens are exactly train (no test pair).",
)
def lastfm_split_is_leakage_free(lastfm_split: dict, lastfm_graph: dict) -> dg.AssetCheckResult:
    data = dataset_of(lastfm_graph)
    n = data.num_artists
    train, test, fit, valid = (_keys(lastfm_split[p], n) for p in ("train", "test", "fit", "valid"))
    graph_listens = _keys(lastfm_graph["graph"][lastfm_lib.LISTENS]["edge_index"], n)
    problems = {
        "train_test_overlap": int(torch.isin(test, train).sum()),
        "fit_valid_overlap": int(torch.isin(valid, fit).sum()),
        "valid_outside_train": int((~torch.isin(valid, train)).sum()),
        "fit_plus_valid_minus_train": int(fit.numel() + valid.numel() - train.numel()),
        "test_in_message_passing": int(torch.isin(test, graph_listens).sum()),
    }
    return dg.AssetCheckResult(passed=not any(problems.values()), metadata={k: v for k, v in problems.items()})


class LastfmTrainConfig(dg.Config):
    max_epochs: int = Field(default=0, ge=0, description="Cap on a trainable model's epochs (0 = the config's own).")


@dg.asset(
    key="lastfm_trained_model",
    partitions_def=config_partitions,
    group_name="lastfm",
    kinds={"pytorch"},
    code_version=CODE_VERSION,
)
def lastfm_trained_model(
    context: dg.AssetExecutionContext,
    config: LastfmTrainConfig,
    torch_runtime: TorchRuntime,
    lastfm_graph: dict,
    lastfm_split: dict,
) -> dg.Output[dict]:
    """The partition's config fitted on all of train.tsv (hyperparameters tuned on validation;
    see configs/lastfm_models.yaml), with each user's top-100 artists, training artists masked."""
    torch_runtime.apply()
    name = context.partition_key
    model_config = dict(lastfm_pipeline.load_registry()[name])
    if config.max_epochs and "epochs" in model_config:
        model_config["epochs"] = min(model_config["epochs"], config.max_epochs)
    data = dataset_of(lastfm_graph)
    fitted = lastfm_pipeline.fit_config(model_config, data, lastfm_split["train"], lastfm_split["test"])
    users = torch.arange(data.num_users)
    topk = lastfm_lib.topk_from_scores(fitted.score_fn, users, lastfm_split["train"], data.num_artists, TOP_K)
    payload = {
        "config": model_config,
        "train_seconds": fitted.seconds,
        "history": fitted.history,
        "topk": topk,
        "state_dict": fitted.model.state_dict() if isinstance(fitted.model, torch.nn.Module) else None,
    }
    return dg.Output(payload, metadata={"train_seconds": round(fitted.seconds, 2), "config": dg.MetadataValue.json(model_config)})


@dg.asset(
    key="lastfm_metric_report",
    partitions_def=config_partitions,
    group_name="lastfm",
    kinds={"pytorch"},
    code_version=CODE_VERSION,
)
def lastfm_metric_report(context: dg.AssetExecutionContext, lastfm_trained_model: dict, lastfm_split: dict, lastfm_graph: dict) -> dg.Output[dict]:
    """Test Recall@10/20, NDCG@10/20, coverage@20 of the partition's model (the data README's protocol)."""
    data = dataset_of(lastfm_graph)
    test = lastfm_split["test"]
    users = torch.unique(test[0])
    metrics = lastfm_lib.evaluate_topk(lastfm_trained_model["topk"][users], users, test, data.num_artists)
    report = {"config": context.partition_key, **metrics, "train_seconds": lastfm_trained_model["train_seconds"]}
    return dg.Output(report, metadata={k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()})


@dg.asset(
    key="lastfm_model_comparison",
    ins={"reports": dg.AssetIn("lastfm_metric_report")},
    group_name="lastfm",
    kinds={"polars"},
    code_version=CODE_VERSION,
)
def lastfm_model_comparison(context: dg.AssetExecutionContext, reports: dict, lake: DataLake) -> dg.Output[pl.DataFrame]:
    """Every materialized Last.fm report in one table (also ``reports/lastfm_model_comparison.md``)."""
    columns = ["config", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20", "train_seconds"]
    rows = [{c: report[c] for c in columns} for report in reports.values()]
    frame = pl.DataFrame(rows, schema={c: (pl.String if c == "config" else pl.Float64) for c in columns}) if rows else pl.DataFrame()
    if rows:
        frame = frame.sort("ndcg@20", descending=True)
        lake.reports_dir.mkdir(parents=True, exist_ok=True)
        (lake.reports_dir / "lastfm_model_comparison.md").write_text(frame_markdown(frame, max_rows=len(rows)) + "\n")
    return dg.Output(frame, metadata={"table": dg.MetadataValue.md(frame_markdown(frame, max_rows=max(len(rows), 1)))})


defs = dg.Definitions(
    assets=[lastfm_raw, lastfm_graph, lastfm_split, lastfm_trained_model, lastfm_metric_report, lastfm_model_comparison],
    asset_checks=[lastfm_split_is_leakage_free],
)
