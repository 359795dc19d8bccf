"""Explainability and cold start: explanations of a sample of users' recommendations from the
models' own computation (with a faithfulness check), and cold-start quality on users held out
of training entirely."""

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from ...core.config import ConfigError
from ...core.data.graph import from_payload
from ...core.models.baselines import MostPopular
from ...core.plots import frame_markdown
from ...core.presentation import metric_value, rounded
from ...core.serving.cold_start import describe_weight, evaluate_cold_start
from ...core.serving.explain import explain_many, faithfulness, render_explanation
from ...core.serving.recommend import bundle_from, rank_songs, ranking_rows, render_ranking
from ...core.storage.artifacts import atomic_write_bytes
from ...datasets.listening import DATASET
from ...datasets.listening.graph import LISTENS
from ..resources import DataLake, TorchRuntime
from .graph import CHAIN

DEFAULT_EXPLAINED = "gat_enhanced"


class ExplanationsConfig(dg.Config):
    configs: list[str] | None = Field(
        default=None,
        description=f"Model configs to explain (each must be materialized). Default: {DEFAULT_EXPLAINED} when it is "
        "materialized, else every materialized trainable config.",
    )
    users: int = Field(default=4, ge=1, description="Users sampled (seeded) among users with training interactions.")
    k: int = Field(default=3, ge=1, description="Recommendations explained per user.")
    seed: int = Field(default=0, description="Seed of the user sample and of the random removals.")
    genre_prior: float | None = Field(
        default=None,
        ge=0.0,
        description="n0 of the adaptive genre weight (None: the one "
        "trained_model chose on validation and stored with the model).",
    )
    faithfulness_users: int = Field(
        default=8, ge=1, description="Users whose top recommendations enter the faithfulness test."
    )
    remove: int = Field(default=5, ge=1, description="Evidence links removed per pair in the faithfulness test.")


@CHAIN.asset(
    "explanations",
    "explanations",
    ins=CHAIN.ins("trained_model", "graph", "split"),
    kinds={"pytorch", "markdown"},
    checks={
        "explanations_faithful": (
            False,
            "Removing the top-attributed evidence links lowers the model's score "
            "more, on average, than removing as many random evidence links (seeded), for "
            "every explained config.",
        )
    },
)
def explanations(
    context: dg.AssetExecutionContext,
    config: ExplanationsConfig,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    trained_model: dict[str, dict],
    graph: dict,
    split: dict,
):
    """Recommendations of a seeded sample of users with their explanations, computed from the
    trained model on the training message-passing graph: the model's score, the evidence links
    on the paths user -> played songs -> artist/genres -> song ranked by gradient x input
    attribution with the model's attention on each, genre and artist influence, similar users;
    plus the faithfulness test (top-attributed vs random evidence removal). Rendered as markdown
    (also ``reports/listening/explanations.md``)."""
    torch_runtime.apply()
    requested = config.configs
    if requested is None:  # the default follows what the run trained (e.g. `materialize --configs lightgcn`)
        trainable = sorted(
            name for name, artifact in trained_model.items() if artifact["config"]["model"] != "most_popular"
        )
        requested = [DEFAULT_EXPLAINED] if DEFAULT_EXPLAINED in trained_model else trainable
    known = DATASET.registry.full(lake.path)  # models.yaml and configs promoted from studies
    unknown = sorted(set(requested) - set(known))
    if unknown:
        raise dg.Failure(f"unknown model configs {unknown}; known: {', '.join(sorted(known))}")
    chosen = [name for name in requested if name in trained_model]
    for name in sorted(set(requested) - set(chosen)):
        context.log.warning(f"trained_model[{name}] is not materialized; not explained")
    if not chosen:
        raise dg.Failure(
            f"none of the configs {requested} has a materialized trained_model; materialized: "
            f"{', '.join(sorted(trained_model)) or 'none'}"
        )
    output, sections, faithful = {}, [], {}
    for name in chosen:
        bundle = bundle_from(DATASET, trained_model[name], graph, split, lake.warehouse_path)
        active = torch.unique(bundle.view[LISTENS].edge_index[0])
        generator = torch.Generator().manual_seed(config.seed)
        sample = active[
            torch.randperm(active.numel(), generator=generator)[: max(config.users, config.faithfulness_users)]
        ]
        entries, pairs = [], []
        sections.append(f"## {name}\n")
        for position, user in enumerate(sample.tolist()):
            ranking = rank_songs(bundle, config.k, user=user, genre_prior=config.genre_prior)
            pairs += [(user, int(song)) for song in ranking.songs.tolist()]
            if position >= config.users:
                continue
            explained = explain_many(bundle, user, ranking.songs.tolist())
            entries.append(
                {
                    "user_id": bundle.user_id(user),
                    "genre_weight": ranking.genre_weight,
                    "recommendations": ranking_rows(bundle, ranking),
                    "explanations": explained,
                }
            )
            sections.append(render_ranking(bundle, ranking, f"user {bundle.user_id(user)}", markdown=True) + "\n")
            sections += [render_explanation(e, markdown=True) + "\n" for e in explained]
        result = {
            "explained": entries,
            "genre_prior": bundle.n0 if config.genre_prior is None else config.genre_prior,
            "genre_prior_source": bundle.n0_source if config.genre_prior is None else "run config",
            "genre_prior_validation_ndcg@10": bundle.n0_scores,
        }
        if not isinstance(bundle.model, MostPopular):
            try:
                f = faithfulness(bundle.model, bundle.view, pairs, remove=config.remove, seed=config.seed)
            except ValueError as error:
                context.log.warning(f"{name}: faithfulness test skipped: {error}")
            else:
                result["faithfulness"] = faithful[name] = f
                sections.insert(
                    sections.index(f"## {name}\n") + 1,
                    f"Faithfulness over {f['pairs']} (user, recommended song) pairs: removing the {f['removed_links']} "
                    f"top-attributed evidence links lowers the score by {f['mean_drop_top']:.4f} on average, "
                    f"{f['removed_links']} random evidence links by {f['mean_drop_random']:.4f}"
                    + (
                        f", the {f['removed_links']} highest-attention links by {f['mean_drop_attention']:.4f}"
                        if "mean_drop_attention" in f
                        else ""
                    )
                    + f"; top beats random on {f['top_beats_random_share']:.0%} of pairs.\n",
                )
        output[name] = result
    markdown = "\n".join(sections)
    atomic_write_bytes(lake.reports_dir / "listening" / "explanations.md", (markdown + "\n").encode())
    metadata = {
        "configs": ", ".join(chosen),
        "users_explained": config.users,
        "explanations": dg.MetadataValue.md(markdown),
        **{f"{name}/genre_prior_n0": float(result["genre_prior"]) for name, result in output.items()},
    }
    for name, f in faithful.items():
        metadata[f"{name}/faithfulness_mean_drop_top"] = rounded(f["mean_drop_top"])
        metadata[f"{name}/faithfulness_mean_drop_random"] = rounded(f["mean_drop_random"])
    yield dg.Output(output, metadata=metadata)
    passed = bool(faithful) and all(f["mean_drop_top"] > f["mean_drop_random"] for f in faithful.values())
    yield dg.AssetCheckResult(
        check_name="explanations_faithful",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **{f"{name}/observed_mean_drop_top": rounded(f["mean_drop_top"]) for name, f in faithful.items()},
            **{f"{name}/threshold_mean_drop_random": rounded(f["mean_drop_random"]) for name, f in faithful.items()},
            "configs_tested": ", ".join(faithful) or "none (no attributable model)",
        },
    )


class ColdStartConfig(dg.Config):
    model: str = Field(default="gat_enhanced", description="Model config retrained without the held-out users.")
    max_epochs: int = Field(default=20, ge=1, description="Epoch cap of that retraining.")
    fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="Share of eligible users held out of training.")
    reveal: list[int] = Field(default=[1, 3, 5, 10], description="Numbers of a held-out user's first songs revealed.")
    genre_top: int = Field(default=3, ge=1, description="Genres a genre-only user states.")
    n0: float | None = Field(
        default=None, ge=0.0, description="Adaptive genre weight w = n0 / (n0 + n) (None: chosen on validation)."
    )
    seed: int = Field(default=0, description="Seed of the held-out user sample.")


@CHAIN.asset("cold_start_report", "explanations", ins=CHAIN.ins("graph", "split"), kinds={"pytorch", "polars"})
def cold_start_report(
    context: dg.AssetExecutionContext,
    config: ColdStartConfig,
    torch_runtime: TorchRuntime,
    lake: DataLake,
    graph: dict,
    split: dict,
) -> dg.Output[pl.DataFrame]:
    """Cold start measured on users held out of training entirely: the config's model is
    retrained without them; each held-out user is described only by the top genres of their
    first songs, or by their first n songs (fold-in of the model's song embeddings), and ranked by
    genres only, the model only, or the adaptive blend w = n0 / (n0 + n); Recall/NDCG@10 on the
    songs they played afterwards, beside most-popular."""
    torch_runtime.apply()
    try:
        model_config = DATASET.registry.get(config.model, DATASET.registry.full(lake.path))
    except ConfigError as error:
        raise dg.Failure(str(error)) from error
    if any(n < 1 for n in config.reveal) or not config.reveal:
        raise dg.Failure(f"reveal must be positive song counts, got {config.reveal}")
    data = from_payload(graph)
    parts = split[model_config.split]

    def fit(kept: dict):
        if not model_config.trainable:
            return None
        return DATASET.fit(model_config, data, kept, max_epochs=config.max_epochs, log=context.log.debug)[0]

    try:
        result = evaluate_cold_start(
            DATASET,
            data,
            parts["train"],
            parts["valid"],
            parts["test"],
            fit,
            reveal=config.reveal,
            genre_top=config.genre_top,
            n0=config.n0,
            fraction=config.fraction,
            seed=config.seed,
        )
    except ValueError as error:
        raise dg.Failure(f"cold_start_report: {error}") from error
    frame = pl.DataFrame(result["rows"])
    markdown = frame_markdown(frame, max_rows=100)
    atomic_write_bytes(lake.reports_dir / "listening" / "cold_start.md", (markdown + "\n").encode())
    popular = frame.filter(pl.col("method") == "most_popular").row(0, named=True)
    genres = frame.filter(pl.col("method").str.starts_with("genres_only")).row(0, named=True)
    return dg.Output(
        frame,
        metadata={
            "model": config.model,
            "heldout_users": result["heldout_users"],
            "target_interactions": result["targets"],
            "adaptive_weight": f"w = n0/(n0+n), n0 = {result['n0']:g}"
            + (" (chosen on validation)" if config.n0 is None else "")
            + f": {describe_weight(result['n0'])}",
            "n0_validation_ndcg@10": dg.MetadataValue.json(
                {str(k): metric_value(v) for k, v in result["n0_validation_ndcg@10"].items()}
            ),
            "most_popular/ndcg@10": metric_value(popular["ndcg@10"]),
            "genres_only/ndcg@10": metric_value(genres["ndcg@10"]),
            "report": dg.MetadataValue.md(markdown),
        },
    )


defs = dg.Definitions(assets=[explanations, cold_start_report])
