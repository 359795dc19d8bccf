"""The ``spotify-engine`` command line.

Every command imports what it needs inside its handler: ``recommend`` reads the serving index
stored with the model and imports torch only (no Dagster, no PyTorch Geometric); ``explain`` and
``recommend --explain`` load the model and its graph."""

import argparse
import json
import sys

CHAINS = ("listening", "playlists", "lastfm")
DESCRIPTION = (
    "Materialize, inspect and serve the spotify-engine recommenders from the shell. "
    "Run 'spotify-engine COMMAND --help' for a command's options."
)


def _error(problem: Exception | str) -> int:
    """Print the problem (a KeyError's message unquoted) to stderr; returns 2, the exit status of bad input."""
    print(f"error: {problem.args[0] if isinstance(problem, KeyError) else problem}", file=sys.stderr)
    return 2


def _print_summary(results, chain: str) -> None:
    from .core.storage.paths import data_lake_root
    from .runner import dataset_of

    print("\nPer-run and per-asset times (seconds):")
    for result in results:
        print(f"  {result.name:<22} {result.seconds:7.1f}  {'ok' if result.success else 'FAILED'}")
        for step, seconds in sorted(result.step_seconds.items(), key=lambda kv: -kv[1]):
            print(f"      {step:<40} {seconds:7.2f}")
    print(f"  {'total':<22} {sum(r.seconds for r in results):7.1f}  ({len(results)} runs)")
    report = data_lake_root() / "reports" / chain / "model_comparison.csv"
    if report.exists():
        import polars as pl

        from .core.evaluation.report import comparison_summary
        from .core.plots import frame_markdown

        frame = pl.read_csv(report)
        print("\nMetric reports (test split):")
        print(frame_markdown(comparison_summary(frame, dataset_of(chain).protocol), max_rows=1000))
        print(f"(every column in {report})")


def _materialize(args: argparse.Namespace) -> int:
    from .runner import materialize_chain

    configs = args.configs.split(",") if args.configs else None
    try:
        results = materialize_chain(args.profile, configs, chain=args.chain)
    except ValueError as error:
        return _error(error)
    _print_summary(results, args.chain)
    failed = [r.name for r in results if not r.success]
    if failed:
        print(f"\nfailed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _home(args: argparse.Namespace) -> int:
    from .core.storage.paths import data_lake_root
    from .defs import lastfm, listening, playlists
    from .defs.chain import register_configs
    from .runner import project_instance

    instance = project_instance()
    # every registry config is a partition before anything runs, so the UI lists never-trained configs
    # as missing instead of showing "0 partitions"
    for chain in (listening.CHAIN, playlists.CHAIN, lastfm.CHAIN):
        register_configs(chain, instance, data_lake_root())
    print(instance.root_directory)
    return 0


def _store():
    from .core.storage.artifacts import ArtifactStore
    from .core.storage.paths import data_lake_root

    return ArtifactStore(data_lake_root() / "artifacts")


LIST_COLUMNS = [
    "experiment",
    "current",
    "split",
    "seed",
    "recorded_at",
    "data",
    "git_commit",
    "recall@10",
    "ndcg@10",
    "mrr@10",
    "coverage@10",
    "gini@10",
    "gate",
    "train_seconds",
]


def _experiments_list(args: argparse.Namespace) -> int:
    from .core.experiments.records import experiments_frame
    from .core.plots import frame_markdown

    frame = experiments_frame(_store(), args.chain, include_history=args.all)
    if frame.is_empty():
        print("no experiments recorded yet: materialize some model configs first (spotify-engine materialize)")
        return 0
    print(frame_markdown(frame.select([c for c in LIST_COLUMNS if c in frame.columns]), max_rows=10_000))
    return 0


def _experiments_compare(args: argparse.Namespace) -> int:
    from .core.config import ConfigError, load_thresholds
    from .core.experiments.records import compare_experiments, load_ab_plan, resolve_experiment
    from .core.plots import frame_markdown
    from .runner import dataset_of

    store, dataset = _store(), dataset_of(args.chain)
    try:
        id_a, report_a = resolve_experiment(store, args.chain, args.a)
        id_b, report_b = resolve_experiment(store, args.chain, args.b)
        plan = load_ab_plan(dataset.registry)
        metrics = args.metrics.split(",") if args.metrics else (plan.metrics if plan else [dataset.protocol.primary])
        result = compare_experiments(report_a, report_b, metrics, load_thresholds())
    except (KeyError, ValueError, ConfigError) as error:
        return _error(error)
    print(f"A = {id_a}\nB = {id_b}\n")
    print(frame_markdown(result["metrics"], max_rows=1000))
    differences = result["differences"]
    print("\nRecorded differences (config, data, code, environment):")
    print(frame_markdown(differences, max_rows=1000) if not differences.is_empty() else "none")
    if result["stats"] is None:
        print(f"\nNo per-user statistics: {result['reason']}")
    else:
        print("\nB vs A per user (paired t, Wilcoxon, bootstrap 95% CI, Cohen's d, Holm; split-users Welch):")
        columns = [
            "metric",
            "n",
            "mean_diff",
            "ci_low",
            "ci_high",
            "cohens_d",
            "t_p_holm",
            "wilcoxon_p_holm",
            "verdict",
            "welch_p_holm",
            "welch_verdict",
        ]
        print(frame_markdown(result["stats"].select(columns), max_rows=100))
    return 0


def reproduce_experiment(ident: str, instance=None, chain: str = "listening") -> dict:
    """Rollback check: re-materialize the recorded experiment's config (trained_model and
    metric_report of its partition, with the recorded epoch cap) on the data now in the lake, and
    compare the new metrics with the recorded ones.

    The registry's config must still equal the recorded one (else the differing fields are
    named, to restore in ``models.yaml``). Returns ids, whether data and experiment key match,
    the largest absolute metric difference and ``reproduced``.
    """
    from .core.config import parse_config
    from .core.experiments.records import resolve_experiment
    from .definitions import defs
    from .runner import dataset_of, model_stage, project_instance, run_config, run_stage

    store = _store()
    experiment_id, recorded = resolve_experiment(store, chain, ident)
    provenance = recorded.get("provenance") or {}
    if not provenance.get("config"):
        raise ValueError(f"experiment {experiment_id} has no recorded provenance: it cannot be reproduced")
    name = recorded["config"]
    recorded_config, current_config = parse_config(provenance["config"]), dataset_of(chain).registry.get(name)
    if recorded_config != current_config:
        changed = [
            f"{field}: {getattr(recorded_config, field)!r} (now {getattr(current_config, field)!r})"
            for field in type(recorded_config).model_fields
            if getattr(recorded_config, field) != getattr(current_config, field)
        ]
        raise ValueError(
            f"config {name!r} changed since {experiment_id}; restore in configs/{chain}/models.yaml: "
            + "; ".join(changed)
        )
    config = run_config()
    if provenance.get("max_epochs_override") is not None:
        config.setdefault("ops", {})[f"{chain}__trained_model"] = {
            "config": {"max_epochs": provenance["max_epochs_override"]}
        }
    instance = project_instance() if instance is None else instance
    result = run_stage(f"reproduce {name}", defs, instance, model_stage(chain), config, partition=name)
    new_id, new = resolve_experiment(store, chain, name)
    if new_id == experiment_id or new.get("provenance", {}).get("evaluated_in_run") != result.run_id:
        raise RuntimeError(f"re-materializing {name} wrote no new metric report (run {result.run_id} failed)")
    differences = {
        metric: abs(float(new["metrics"][metric]) - float(value))
        for metric, value in recorded["metrics"].items()
        if metric in new["metrics"]
    }
    same_data = (new["provenance"].get("data") or {}).get("combined") == (provenance.get("data") or {}).get("combined")
    largest = max(differences.values()) if differences else float("inf")
    return {
        "recorded": experiment_id,
        "new": new_id,
        "run_success": result.success,
        "same_data": same_data,
        "same_experiment_key": new.get("experiment_key") == recorded.get("experiment_key"),
        "max_abs_metric_diff": largest,
        "reproduced": same_data and largest <= 1e-9,
    }


def _experiments_reproduce(args: argparse.Namespace) -> int:
    from .core.config import ConfigError

    try:
        outcome = reproduce_experiment(args.experiment, chain=args.chain)
    except (KeyError, ValueError, ConfigError, RuntimeError) as error:
        return _error(error)
    for key, value in outcome.items():
        print(f"{key:<22} {value}")
    if not outcome["same_data"]:
        print(
            "the data in the lake differs from the recorded data fingerprint: re-materialize the data stage "
            "with the recorded world config first",
            file=sys.stderr,
        )
    return 0 if outcome["reproduced"] else 1


SERVING_CHAIN = "listening"  # serving needs a chain whose items have artist and genre roles


def _one_thread() -> None:
    """Serving runs torch with 1 intra-op thread, as the assets do (on a busy 2-core machine a cold
    `explain` took 4.2 s with 1 thread and 6-9 s with 2)."""
    import torch

    torch.set_num_threads(1)


def _serving_bundle(config: str):
    """A listening-chain model with its graph, for explanations (and models without a serving index)."""
    from .core.serving.recommend import load_bundle
    from .core.storage.paths import data_lake_root
    from .datasets.listening import DATASET

    return load_bundle(data_lake_root(), DATASET, config)


def _serving_index(config: str):
    """The serving index stored with the config's trained model (torch only), else the full bundle."""
    from .core.serving.recommend import load_index
    from .core.storage.paths import data_lake_root

    return load_index(data_lake_root(), SERVING_CHAIN, config) or _serving_bundle(config)


def _note_genre_prior(index, override: float | None) -> None:
    if override is None and index.n0_source.startswith("default"):
        print(
            f"note: trained_model[{index.config.name}]: n0 = {index.n0:g} ({index.n0_source}); "
            "pass --genre-prior N0 to set it",
            file=sys.stderr,
        )


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _recommend(args: argparse.Namespace) -> int:
    from .core.config import ConfigError
    from .core.serving.recommend import UnknownIdError, rank_songs, ranking_rows, render_ranking
    from .core.storage.artifacts import ArtifactNotFoundError

    if args.user is None and not args.songs and not args.genres:
        return _error("give --user ID, or a new user's --songs ID,ID and/or --genres NAME,NAME")
    if args.user is not None and (args.songs or args.genres):
        return _error("--user cannot be combined with --songs/--genres (those describe a new user)")
    _one_thread()
    try:
        # explanations need the model and its graph; a ranking needs only the serving index
        bundle = _serving_bundle(args.model) if args.explain and args.user is not None else _serving_index(args.model)
        _note_genre_prior(bundle, args.genre_prior)
        if args.user is not None:
            user = bundle.user_index(args.user)
            ranking = rank_songs(bundle, args.k, user=user, genre_prior=args.genre_prior, diversify=args.diversify)
            who = f"user {args.user}"
        else:
            songs = [bundle.song_index(s) for s in _split_list(args.songs)]
            genres = [bundle.genre_index(g) for g in _split_list(args.genres)]
            ranking = rank_songs(
                bundle, args.k, songs=songs, genres=genres, genre_prior=args.genre_prior, diversify=args.diversify
            )
            who = (
                "a new user"
                + (f" with songs {args.songs}" if args.songs else "")
                + (f" and genres {args.genres}" if args.genres else "")
            )
            user = None
        explanations = []
        if args.explain:
            if user is None:
                print(
                    "note: --explain needs a known --user (a new user has no node in the model's graph)",
                    file=sys.stderr,
                )
            else:
                from .core.serving.explain import explain_many

                explanations = explain_many(bundle, user, ranking.songs.tolist())
    except (UnknownIdError, ConfigError, ArtifactNotFoundError, ValueError) as error:
        return _error(error)
    if args.json:
        # ids as the warehouse stores them (integers), like every song_id below and in `explain --json`
        payload = {
            "config": args.model,
            "user_id": None if user is None else bundle.user_id(user),
            "songs": [bundle.song_id(s) for s in songs] if user is None else [],
            "genres": _split_list(args.genres),
            "genre_weight": ranking.genre_weight,
            "genre_prior": ranking.genre_prior,
            "genre_prior_source": "--genre-prior" if args.genre_prior is not None else bundle.n0_source,
            "interactions": ranking.interactions,
            "diversify": args.diversify.describe(args.k),
            "recommendations": ranking_rows(bundle, ranking),
        }
        if explanations:
            payload["explanations"] = explanations
        print(json.dumps(payload, indent=2))
        return 0
    print(render_ranking(bundle, ranking, who))
    if explanations:
        from .core.serving.explain import render_explanation

        for explanation in explanations:
            print("\n" + render_explanation(explanation))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .core.config import ConfigError
    from .core.serving.explain import explain, render_explanation
    from .core.serving.recommend import UnknownIdError
    from .core.storage.artifacts import ArtifactNotFoundError

    _one_thread()
    try:
        bundle = _serving_bundle(args.model)
        explanation = explain(bundle, bundle.user_index(args.user), bundle.song_index(args.song), top=args.top)
    except (UnknownIdError, ConfigError, ArtifactNotFoundError, ValueError) as error:
        return _error(error)
    print(json.dumps(explanation, indent=2) if args.json else render_explanation(explanation))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train one config on the materialized graph and split; print progress and metrics; write nothing."""
    import torch
    from pydantic import ValidationError

    from .core.config import ConfigError, update_config, validation_problems
    from .core.data.graph import from_payload
    from .core.storage.artifacts import ArtifactNotFoundError, load_torch
    from .core.storage.paths import configs_dir, data_lake_root
    from .core.training.inputs import task_labels
    from .core.training.losses import task_metrics
    from .runner import dataset_of

    dataset = dataset_of(args.chain)
    try:
        registry = dataset.registry.load(configs_dir() / args.chain / "variants.yaml") if args.variants else None
        config = dataset.registry.get(args.config, registry)
        if args.trainer and args.trainer != getattr(config, "trainer", None):
            config = update_config(config, trainer=args.trainer)
    except ConfigError as error:
        return _error(error)
    except ValidationError as error:
        return _error(f"config {args.config!r} with --trainer {args.trainer}: {validation_problems(error)}")
    if not config.trainable:
        return _error(f"config {config.name!r} ({config.model}) has nothing to train")
    store, lake = _store(), data_lake_root()
    try:
        graph = load_torch(store.current([args.chain, "graph"]) / "data.pt")
        splits = load_torch(store.current([args.chain, "split"]) / "data.pt")
    except ArtifactNotFoundError as error:
        return _error(
            f"{error}; materialize the data stage in {lake} first (spotify-engine materialize --chain {args.chain})"
        )
    data, split = from_payload(graph), splits[config.split]
    pairs = {part: dataset.pairs(data, split[part]) for part in ("train", "valid", "test")}
    print(
        f"training {config.name} ({config.model}, {config.trainer} trainer) on the {config.split} split of the "
        f"{args.chain} chain in {lake}: {pairs['train'].size(1)}/{pairs['valid'].size(1)}/{pairs['test'].size(1)} "
        "train/valid/test pairs; nothing is written to the asset store",
        flush=True,
    )
    try:
        model, result, _ = dataset.fit(
            config, data, split, max_epochs=args.max_epochs, log=lambda message: print(message, flush=True)
        )
    except ValueError as error:
        return _error(error)
    protocol, users = dataset.protocol.for_graph(data), dataset.sample(data, config)
    known = dataset.pairs(data, dataset.training_index(split, config))
    scores = {
        "valid": protocol.validate(model.score, known, pairs["valid"], model.num_items, users),
        "test": protocol.validate(
            model.score, torch.cat([known, pairs["valid"]], 1), pairs["test"], model.num_items, users
        ),
    }
    tasks = {
        part: task_metrics(model, config, task_labels(config, data, dataset.schema, split[part]), pairs[part])
        for part in ("valid", "test")
    }
    chosen = "final" if result.best_valid is None else f"best (epoch {result.best_epoch})"
    columns = list(
        dict.fromkeys(
            [protocol.primary, *(c for c in ("coverage@10", "coverage@20") if c in scores["test"]), protocol.monitor]
        )
    )
    print(f"\n{result.epochs_run} epochs in {result.seconds:.1f} s; {chosen} weights")
    print("| part | " + " | ".join(columns) + " |" + "".join(f" auc {task} |" for task in config.tasks))
    print("|---|" + "---|" * len(columns) + "---|" * len(config.tasks))
    for part, metrics in scores.items():
        aucs = "".join(
            " - |" if tasks[part][task]["auc"] is None else f" {tasks[part][task]['auc']:.4f} |"
            for task in config.tasks
        )
        print(f"| {part} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + f" |{aucs}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _lambda(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _diversify_option(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The ``recommend`` re-ranker from ``--diversify`` and its parameter (a parameter of another
    re-ranker is a usage error of the subcommand)."""
    from .core.serving.diversity import DEFAULT_MAX_PER_ARTIST, DEFAULT_MMR_LAMBDA, Diversify

    if args.max_per_artist is not None and args.diversify != "artist-cap":
        parser.error(f"--max-per-artist applies to --diversify artist-cap, not --diversify {args.diversify}")
    if args.mmr_lambda is not None and args.diversify != "mmr":
        parser.error(f"--mmr-lambda applies to --diversify mmr, not --diversify {args.diversify}")
    return Diversify(
        args.diversify,
        max_per_artist=args.max_per_artist or DEFAULT_MAX_PER_ARTIST,
        mmr_lambda=DEFAULT_MMR_LAMBDA if args.mmr_lambda is None else args.mmr_lambda,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotify-engine", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser(
        "materialize", help="materialize the whole chain (data, every model config, comparison)"
    )
    materialize.add_argument("--profile", default="default", help="run-config profile: default or tiny")
    materialize.add_argument("--configs", help="comma-separated model configs (default: all in the registry)")
    materialize.add_argument("--chain", choices=CHAINS, default="listening", help="the chain (default listening)")
    materialize.set_defaults(handler=_materialize)
    demo = commands.add_parser("demo", help="materialize the default chain on generated data and print the summary")
    demo.set_defaults(handler=_materialize, profile="default", configs=None, chain="listening")
    home = commands.add_parser(
        "home",
        help="create the Dagster home under the data lake, register every chain's configs as partitions, print its path",
    )
    home.set_defaults(handler=_home)
    experiments = commands.add_parser("experiments", help="recorded experiments (every metric report) in the data lake")
    experiments.add_argument("--chain", choices=CHAINS, default="listening", help="the chain (default listening)")
    experiment_commands = experiments.add_subparsers(dest="experiments_command", required=True)
    listing = experiment_commands.add_parser(
        "list", help="one row per config's current report (--all: every recorded one)"
    )
    listing.add_argument("--all", action="store_true", help="include every recorded version, not only the current ones")
    listing.set_defaults(handler=_experiments_list)
    compare = experiment_commands.add_parser(
        "compare", help="compare two experiments: metrics, recorded differences, statistics"
    )
    compare.add_argument("a", help="control: a config name (its current report) or an experiment id config@version")
    compare.add_argument("b", help="treatment: a config name or an experiment id")
    compare.add_argument("--metrics", help="comma-separated per-user metrics (default: configs/<chain>/ab_tests.yaml)")
    compare.set_defaults(handler=_experiments_compare)
    reproduce = experiment_commands.add_parser(
        "reproduce", help="rollback check: re-materialize a recorded experiment's config and compare its metrics"
    )
    reproduce.add_argument("experiment", help="a config name (its current report) or an experiment id config@version")
    reproduce.set_defaults(handler=_experiments_reproduce)
    recommend = commands.add_parser(
        "recommend", help="top-k songs for a user (or a new user's songs/genres) from a materialized model"
    )
    recommend.add_argument("--model", required=True, help="model config (a materialized trained_model partition)")
    recommend.add_argument("--user", help="warehouse user id")
    recommend.add_argument("--songs", help="new user: comma-separated warehouse song ids they like")
    recommend.add_argument("--genres", help="new user: comma-separated genre names or ids they like")
    recommend.add_argument("--k", type=int, default=10, help="list length (default 10)")
    recommend.add_argument(
        "--genre-prior",
        type=float,
        default=None,
        help="n0 of the adaptive genre weight w = n0/(n0+n), n = the user's training interactions "
        "(0: model only; default: the n0 trained_model chose on the validation split and stored with the model)",
    )
    recommend.add_argument(
        "--diversify",
        choices=("none", "artist-cap", "mmr"),
        default="none",  # diversity.RERANKERS
        help="re-rank the top k for artist/genre diversity from the best max(50, 5k) songs: artist-cap "
        "(at most --max-per-artist songs of one artist) or mmr (maximal marginal relevance, "
        "--mmr-lambda); default none",
    )
    recommend.add_argument(
        "--max-per-artist",
        type=_positive_int,
        default=None,
        metavar="N",
        help="artist-cap: songs of one artist in the list (default 2)",
    )
    recommend.add_argument(
        "--mmr-lambda",
        type=_lambda,
        default=None,
        metavar="X",
        help="mmr: weight of diversity in [0, 1] (0: the plain ranking; default 0.3)",
    )
    recommend.add_argument("--explain", action="store_true", help="explain every recommended song")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of tables")
    recommend.set_defaults(handler=_recommend)
    explain = commands.add_parser(
        "explain", help="why a model scores a song for a user: attention paths, attributions, influences"
    )
    explain.add_argument("--model", required=True, help="model config (a materialized trained_model partition)")
    explain.add_argument("--user", required=True, help="warehouse user id")
    explain.add_argument("--song", required=True, help="warehouse song id")
    explain.add_argument("--top", type=int, default=8, help="evidence links and paths to show (default 8)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of tables")
    explain.set_defaults(handler=_explain)
    training = commands.add_parser(
        "train",
        help="train one config on the materialized graph and splits and print its metrics (writes nothing)",
        description="Train CONFIG on the chain's graph and split materialized in the data lake, printing per-epoch "
        "progress, then the chain's validation and test metrics (and task-head AUCs). A dry run for fast feedback: "
        "nothing is written to the asset store (no trained_model, no checkpoint); materialize the <chain>/trained_model "
        "partition to keep a model.",
    )
    training.add_argument(
        "config", help="config name in configs/<chain>/models.yaml (or variants.yaml with --variants)"
    )
    training.add_argument("--chain", choices=CHAINS, default="listening", help="the chain (default listening)")
    training.add_argument("--trainer", choices=("simple", "advanced"), help="override the config's trainer")
    training.add_argument("--max-epochs", type=_positive_int, help="cap on epochs (default: the config's max_epochs)")
    training.add_argument("--variants", action="store_true", help="look CONFIG up in configs/<chain>/variants.yaml")
    training.set_defaults(handler=_train)
    for subparsers in (commands, experiment_commands):  # a bad flag is reported with its subcommand's usage
        for subparser in subparsers.choices.values():
            subparser.set_defaults(usage_parser=subparser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.usage_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "recommend":
        args.diversify = _diversify_option(args, recommend)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
