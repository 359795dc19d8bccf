"""The ``spotify-engine`` command line."""

import argparse
import sys

import polars as pl


def _print_summary(results) -> None:
    from .lib.paths import data_lake_root

    print("\nPer-run and per-asset times (seconds):")
    for result in results:
        print(f"  {result.name:<22} {result.seconds:7.1f}  {'ok' if result.success else 'FAILED'}")
        for step, seconds in sorted(result.step_seconds.items(), key=lambda kv: -kv[1]):
            print(f"      {step:<40} {seconds:7.2f}")
    report = data_lake_root() / "reports" / "model_comparison.csv"
    if report.exists():
        from .lib.plots import frame_markdown

        frame = pl.read_csv(report)
        columns = ["config", "split", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10",
                   "hit_rate@10", "coverage@10", "ndcg@10 / most_popular", "gate", "train_seconds", "epochs"]
        print("\nMetric reports (test split):")
        print(frame_markdown(frame.select([c for c in columns if c in frame.columns])))
        print(f"(also in {report})")


def _materialize(args: argparse.Namespace) -> int:
    from .runner import materialize_chain

    configs = args.configs.split(",") if args.configs else None
    try:
        results = materialize_chain(args.profile, configs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(results)
    failed = [r.name for r in results if not r.success]
    if failed:
        print(f"\nfailed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _home(args: argparse.Namespace) -> int:
    from .runner import dagster_home

    print(dagster_home())
    return 0


def _store():
    from .lib.artifacts import ArtifactStore
    from .lib.paths import data_lake_root

    return ArtifactStore(data_lake_root() / "artifacts")


LIST_COLUMNS = ["experiment", "current", "split", "seed", "recorded_at", "data", "git_commit",
                "recall@10", "ndcg@10", "mrr@10", "coverage@10", "gini@10", "gate", "train_seconds"]


def _experiments_list(args: argparse.Namespace) -> int:
    from .lib.experiments import experiments_frame
    from .lib.plots import frame_markdown

    frame = experiments_frame(_store(), include_history=args.all)
    if frame.is_empty():
        print("no experiments recorded yet: materialize some model configs first (spotify-engine materialize)")
        return 0
    print(frame_markdown(frame.select([c for c in LIST_COLUMNS if c in frame.columns]), max_rows=10_000))
    return 0


def _experiments_compare(args: argparse.Namespace) -> int:
    from .lib.configs import ConfigError, load_thresholds
    from .lib.experiments import compare_experiments, load_ab_plan, resolve_experiment
    from .lib.plots import frame_markdown

    store = _store()
    try:
        id_a, report_a = resolve_experiment(store, args.a)
        id_b, report_b = resolve_experiment(store, args.b)
        metrics = args.metrics.split(",") if args.metrics else load_ab_plan().metrics
        result = compare_experiments(report_a, report_b, metrics, load_thresholds())
    except (KeyError, ValueError, ConfigError) as error:
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    print(f"A = {id_a}\nB = {id_b}\n")
    print(frame_markdown(result["metrics"], max_rows=1000))
    differences = result["differences"]
    print("\nRecorded differences (config, data, code, environment):")
    print(frame_markdown(differences, max_rows=1000) if not differences.is_empty() else "none")
    if result["stats"] is None:
        print(f"\nNo per-user statistics: {result['reason']}")
    else:
        print("\nB vs A per user (paired t, Wilcoxon, bootstrap 95% CI, Cohen's d, Holm; split-users Welch):")
        columns = ["metric", "n", "mean_diff", "ci_low", "ci_high", "cohens_d", "t_p_holm", "wilcoxon_p_holm", "verdict",
                   "welch_p_holm", "welch_verdict"]
        print(frame_markdown(result["stats"].select(columns), max_rows=100))
    return 0


def reproduce_experiment(ident: str, instance=None) -> dict:
    """Rollback check: re-materialize the recorded experiment's config (trained_model and
    metric_report of its partition, with the recorded epoch cap) on the data now in the lake, and
    compare the new metrics with the recorded ones.

    The registry's config must still equal the recorded one (else the differing fields are
    named, to restore in ``models.yaml``). Returns ids, whether data and experiment key match,
    the largest absolute metric difference and ``reproduced``.
    """
    import dagster as dg

    from .definitions import defs
    from .lib.configs import ModelConfig, get_config
    from .lib.experiments import resolve_experiment
    from .runner import MODEL_STAGE, dagster_home, run_config

    store = _store()
    experiment_id, recorded = resolve_experiment(store, ident)
    provenance = recorded.get("provenance") or {}
    if not provenance.get("config"):
        raise ValueError(f"experiment {experiment_id} has no recorded provenance: it cannot be reproduced")
    name = recorded["config"]
    recorded_config, current_config = ModelConfig(**provenance["config"]), get_config(name)
    if recorded_config != current_config:
        changed = [
            f"{field}: {getattr(recorded_config, field)!r} (now {getattr(current_config, field)!r})"
            for field in type(recorded_config).model_fields
            if getattr(recorded_config, field) != getattr(current_config, field)
        ]
        raise ValueError(f"config {name!r} changed since {experiment_id}; restore in models.yaml: " + "; ".join(changed))
    config = run_config()
    if provenance.get("max_epochs_override") is not None:
        config.setdefault("ops", {})["trained_model"] = {"config": {"max_epochs": provenance["max_epochs_override"]}}
    if instance is None:
        dagster_home()
        instance = dg.DagsterInstance.get()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=MODEL_STAGE, run_config=config, instance=instance,
        resources=defs.resources, partition_key=name, raise_on_error=False,
    )
    new_id, new = resolve_experiment(store, name)
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
    from .lib.configs import ConfigError

    try:
        outcome = reproduce_experiment(args.experiment)
    except (KeyError, ValueError, ConfigError, RuntimeError) as error:
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    for key, value in outcome.items():
        print(f"{key:<22} {value}")
    if not outcome["same_data"]:
        print("the data in the lake differs from the recorded data fingerprint: re-materialize the data stage "
              "with the recorded world config first", file=sys.stderr)
    return 0 if outcome["reproduced"] else 1


def _serving_bundle(config: str):
    from .lib.paths import data_lake_root
    from .lib.recommend import load_bundle

    return load_bundle(data_lake_root(), config)


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _recommend(args: argparse.Namespace) -> int:
    import json

    from .lib.artifacts import ArtifactNotFoundError
    from .lib.configs import ConfigError
    from .lib.explain import explain, render_explanation
    from .lib.recommend import UnknownIdError, rank_songs, ranking_rows, render_ranking

    if args.user is None and not args.songs and not args.genres:
        print("error: give --user ID, or a new user's --songs ID,ID and/or --genres NAME,NAME", file=sys.stderr)
        return 2
    if args.user is not None and (args.songs or args.genres):
        print("error: --user cannot be combined with --songs/--genres (those describe a new user)", file=sys.stderr)
        return 2
    try:
        bundle = _serving_bundle(args.model)
        if args.user is not None:
            user = bundle.user_index(args.user)
            ranking = rank_songs(bundle, args.k, user=user, genre_prior=args.genre_prior)
            who = f"user {args.user}"
        else:
            songs = [bundle.song_index(s) for s in _split_list(args.songs)]
            genres = [bundle.genre_index(g) for g in _split_list(args.genres)]
            ranking = rank_songs(bundle, args.k, songs=songs, genres=genres, genre_prior=args.genre_prior)
            who = "a new user" + (f" with songs {args.songs}" if args.songs else "") + (f" and genres {args.genres}" if args.genres else "")
            user = None
        explanations = []
        if args.explain:
            if user is None:
                print("note: --explain needs a known --user (a new user has no node in the model's graph)", file=sys.stderr)
            else:
                explanations = [explain(bundle, user, int(song)) for song in ranking.songs]
    except (UnknownIdError, ConfigError, ArtifactNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        payload = {"config": args.model, "user_id": args.user, "songs": _split_list(args.songs), "genres": _split_list(args.genres),
                   "genre_weight": ranking.genre_weight, "genre_prior": ranking.genre_prior, "interactions": ranking.interactions,
                   "recommendations": ranking_rows(bundle, ranking)}
        if explanations:
            payload["explanations"] = explanations
        print(json.dumps(payload, indent=2))
        return 0
    print(render_ranking(bundle, ranking, who))
    for explanation in explanations:
        print("\n" + render_explanation(explanation))
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    from .lib.artifacts import ArtifactNotFoundError
    from .lib.configs import ConfigError
    from .lib.explain import explain, render_explanation
    from .lib.recommend import UnknownIdError

    try:
        bundle = _serving_bundle(args.model)
        explanation = explain(bundle, bundle.user_index(args.user), bundle.song_index(args.song), top=args.top)
    except (UnknownIdError, ConfigError, ArtifactNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(explanation, indent=2) if args.json else render_explanation(explanation))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train one config on the materialized graph and splits; print progress and metrics; write nothing."""
    import torch
    from pydantic import ValidationError

    from .lib.artifacts import ArtifactNotFoundError, load_torch
    from .lib.configs import ConfigError, ModelConfig, get_config, load_registry
    from .lib.graph import LISTENS, from_payload, message_passing_graph
    from .lib.metrics import ranking_metrics
    from .lib.paths import configs_dir, data_lake_root
    from .lib.training import build_model, embed, num_nodes_of, task_metrics, train, training_inputs

    try:
        registry = load_registry(configs_dir() / "variants.yaml") if args.variants else None
        config = get_config(args.config, registry)
        if args.trainer and args.trainer != config.trainer:
            config = ModelConfig(**{**config.model_dump(), "trainer": args.trainer})
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"error: config {args.config!r} with --trainer {args.trainer}: {problems}", file=sys.stderr)
        return 2
    if not config.trainable:
        print(f"error: config {config.name!r} ({config.model}) has nothing to train", file=sys.stderr)
        return 2
    store, lake = _store(), data_lake_root()
    try:
        graph = load_torch(store.current(["listening_graph"]) / "data.pt")
        splits = load_torch(store.current(["interaction_splits"]) / "data.pt")
    except ArtifactNotFoundError as error:
        print(f"error: {error}; materialize the data stage in {lake} first (spotify-engine materialize)", file=sys.stderr)
        return 2
    data = from_payload(graph)
    split = splits[config.split]
    view = message_passing_graph(data, split["train"])
    pairs = {part: data[LISTENS].edge_index[:, split[part]] for part in ("train", "valid", "test")}
    try:
        inputs = training_inputs(config, data, split["train"])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"training {config.name} ({config.model}, {config.trainer} trainer) on the {config.split} split of {lake}: "
          f"{pairs['train'].size(1)}/{pairs['valid'].size(1)}/{pairs['test'].size(1)} train/valid/test pairs; "
          "nothing is written to the asset store", flush=True)
    model = build_model(config, num_nodes_of(data))
    result = train(model, view, pairs["valid"], config, max_epochs=args.max_epochs,
                   log=lambda message: print(message, flush=True), **inputs)
    user_emb, song_emb = embed(model, view)
    scores = {
        "valid": ranking_metrics(user_emb, song_emb, pairs["valid"], pairs["train"], ks=(10,)),
        "test": ranking_metrics(user_emb, song_emb, pairs["test"], torch.cat([pairs["train"], pairs["valid"]], 1), ks=(10,)),
    }
    tasks = {part: task_metrics(model, config, data, view, split[part]) for part in ("valid", "test")}
    chosen = "final" if result.best_valid_recall is None else f"best (epoch {result.best_epoch})"
    print(f"\n{result.epochs_run} epochs in {result.seconds:.1f} s; {chosen} weights")
    print("| part | ndcg@10 | coverage@10 | recall@10 |" + "".join(f" auc {task} |" for task in config.tasks))
    print("|---|---|---|---|" + "---|" * len(config.tasks))
    for part, metrics in scores.items():
        aucs = "".join(
            " - |" if tasks[part][task]["auc"] is None else f" {tasks[part][task]['auc']:.4f} |" for task in config.tasks
        )
        print(f"| {part} | {metrics['ndcg@10']:.4f} | {metrics['coverage@10']:.4f} | {metrics['recall@10']:.4f} |{aucs}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_train_command(commands) -> None:
    training = commands.add_parser(
        "train",
        help="train one config on the materialized graph and splits and print its metrics (writes nothing)",
        description="Train CONFIG on the listening_graph and interaction_splits materialized in the data lake, "
        "printing per-epoch progress, then validation and test NDCG@10 / coverage@10 (and task-head AUCs). "
        "A dry run for fast feedback: nothing is written to the asset store (no trained_model, no checkpoint); "
        "materialize the trained_model partition to keep a model.",
    )
    training.add_argument("config", help="config name in configs/models.yaml (or configs/variants.yaml with --variants)")
    training.add_argument("--trainer", choices=("simple", "advanced"), help="override the config's trainer")
    training.add_argument("--max-epochs", type=_positive_int, help="cap on epochs (default: the config's max_epochs)")
    training.add_argument("--variants", action="store_true", help="look CONFIG up in configs/variants.yaml")
    training.set_defaults(handler=_train)


def _add_serving_commands(commands) -> None:
    recommend = commands.add_parser("recommend", help="top-k songs for a user (or a new user's songs/genres) from a materialized model")
    recommend.add_argument("--model", required=True, help="model config (a materialized trained_model partition)")
    recommend.add_argument("--user", help="warehouse user id")
    recommend.add_argument("--songs", help="new user: comma-separated warehouse song ids they like")
    recommend.add_argument("--genres", help="new user: comma-separated genre names or ids they like")
    recommend.add_argument("--k", type=int, default=10, help="list length (default 10)")
    recommend.add_argument("--genre-prior", type=float, default=None,
                           help="n0 of the adaptive genre weight w = n0/(n0+n), n = the user's training interactions "
                           "(0: model only; default: chosen on the validation split)")
    recommend.add_argument("--explain", action="store_true", help="explain every recommended song")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of tables")
    recommend.set_defaults(handler=_recommend)
    explain = commands.add_parser("explain", help="why a model scores a song for a user: attention paths, attributions, influences")
    explain.add_argument("--model", required=True, help="model config (a materialized trained_model partition)")
    explain.add_argument("--user", required=True, help="warehouse user id")
    explain.add_argument("--song", required=True, help="warehouse song id")
    explain.add_argument("--top", type=int, default=8, help="evidence links and paths to show (default 8)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of tables")
    explain.set_defaults(handler=_explain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotify-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser("materialize", help="materialize the whole chain (data, every model config, comparison)")
    materialize.add_argument("--profile", default="default", help="run-config profile: default or tiny")
    materialize.add_argument("--configs", help="comma-separated model configs (default: all in the registry)")
    materialize.set_defaults(handler=_materialize)
    demo = commands.add_parser("demo", help="materialize the default chain on generated data and print the summary")
    demo.set_defaults(handler=_materialize, profile="default", configs=None)
    home = commands.add_parser("home", help="create the Dagster home under the data lake and print its path")
    home.set_defaults(handler=_home)
    experiments = commands.add_parser("experiments", help="recorded experiments (every metric report) in the data lake")
    experiment_commands = experiments.add_subparsers(dest="experiments_command", required=True)
    listing = experiment_commands.add_parser("list", help="one row per config's current report (--all: every recorded one)")
    listing.add_argument("--all", action="store_true", help="include every recorded version, not only the current ones")
    listing.set_defaults(handler=_experiments_list)
    compare = experiment_commands.add_parser("compare", help="compare two experiments: metrics, recorded differences, statistics")
    compare.add_argument("a", help="control: a config name (its current report) or an experiment id config@version")
    compare.add_argument("b", help="treatment: a config name or an experiment id")
    compare.add_argument("--metrics", help="comma-separated per-user metrics (default: configs/ab_tests.yaml)")
    compare.set_defaults(handler=_experiments_compare)
    reproduce = experiment_commands.add_parser(
        "reproduce", help="rollback check: re-materialize a recorded experiment's config and compare its metrics"
    )
    reproduce.add_argument("experiment", help="a config name (its current report) or an experiment id config@version")
    reproduce.set_defaults(handler=_experiments_reproduce)
    _add_serving_commands(commands)
    _add_train_command(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
