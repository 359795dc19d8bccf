"""Experiment records, A/B plans and the champion: Dagster-free.

Every ``metric_report`` carries a *provenance* record (written by ``trained_model`` and completed
by ``metric_report``): the full config and seed, the training epoch cap of the run, content hashes
of the graph and of the split it was trained and evaluated on, the code versions of the assets,
the git commit (and whether the tree was dirty), dependency versions and the run id. Its
*experiment key* hashes what determines the result (config, data, code, epoch cap): two reports
with the same key must have the same metrics (the rollback guarantee, tested).

The experiments table reads every recorded ``metric_report`` version from the artifact store
(``--all``) or only the current one per config. The champion state names, per split, the
config currently serving, and the history of seedings and promotions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from ..config import ConfigError, Thresholds, read_yaml, validation_problems
from ..evaluation.stats import holm, paired_test
from ..registry import Registry
from ..storage.artifacts import POINTER, ArtifactNotFoundError, ArtifactStore, load_torch
from ..storage.paths import REPO_ROOT

DEPENDENCIES = ("torch", "torch_geometric", "dagster", "numpy", "scipy", "polars", "duckdb", "pydantic")
SUMMARY_METRICS = (
    "recall@10",
    "ndcg@10",
    "mrr@10",
    "hit_rate@10",
    "coverage@10",
    "gini@10",
    "novelty@10",
    "ild_genre@10",
    "personalization@10",
)


# ---------------------------------------------------------------------------------- provenance


def git_state(repo: Path = REPO_ROOT) -> dict[str, object]:
    """HEAD commit and whether tracked files differ from it (``unknown`` outside a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    if commit.returncode != 0:
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def dependency_versions(names: Iterable[str] = DEPENDENCIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 (16 hex digits) of the tensors' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(data, split: dict) -> dict[str, str]:
    """Content hashes of a chain's graph (node ids, every edge and edge attribute) and of one split
    strategy's indices, and of both together."""
    graph_tensors = [data[t].node_id for t in sorted(data.node_types) if isinstance(data[t].get("node_id"), Tensor)]
    for edge_type in sorted(data.edge_types):
        store = data[edge_type]
        graph_tensors += [store[name] for name in sorted(store.keys()) if isinstance(store[name], Tensor)]
    graph_hash = tensor_digest(*graph_tensors)
    split_hash = tensor_digest(split["train"], split["valid"], split["test"])
    return {
        "graph": graph_hash,
        "split": split_hash,
        "combined": hashlib.sha256(f"{graph_hash}{split_hash}".encode()).hexdigest()[:16],
    }


def experiment_key(provenance: dict) -> str:
    """Hash of what determines a report: config, data, code versions and the epoch cap."""
    payload = {
        "config": provenance.get("config"),
        "data": (provenance.get("data") or {}).get("combined"),
        "training_data": (provenance.get("training_data") or {}).get("combined"),
        "code": provenance.get("code_versions"),
        "max_epochs_override": provenance.get("max_epochs_override"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------- A/B plan


class ABPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    control: str
    treatment: str

    @property
    def name(self) -> str:
        return f"{self.treatment} vs {self.control}"


class ABPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: list[str] = Field(min_length=1)
    pairs: list[ABPair] = Field(min_length=1)


def ab_plan_path(registry: Registry) -> Path:
    """A chain's A/B plan: ``ab_tests.yaml`` beside its registry file."""
    return registry.path.with_name("ab_tests.yaml")


def load_ab_plan(registry: Registry, path: Path | None = None, lake_root: Path | None = None) -> ABPlan | None:
    """The chain's configured A/B pairs, validated: known configs (registry file and promoted),
    distinct, on the same split. None when the chain has no plan file."""
    path = path or ab_plan_path(registry)
    if not Path(path).exists() and path == ab_plan_path(registry):
        return None
    configs = registry.full(lake_root)
    try:
        plan = ABPlan(**read_yaml(path))
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error)}") from None
    seen = set()
    for index, pair in enumerate(plan.pairs):
        where = f"{path}: pair {index} ({pair.name})"
        for role in ("control", "treatment"):
            try:
                registry.get(getattr(pair, role), configs)
            except ConfigError as error:
                raise ConfigError(f"{where}: {role}: {error}") from None
        if pair.control == pair.treatment:
            raise ConfigError(f"{where}: control and treatment are the same config")
        splits = configs[pair.control].split, configs[pair.treatment].split
        if splits[0] != splits[1]:
            raise ConfigError(
                f"{where}: control is on split {splits[0]!r}, treatment on {splits[1]!r}; a paired test needs one split"
            )
        if (pair.control, pair.treatment) in seen:
            raise ConfigError(f"{where}: duplicate pair")
        seen.add((pair.control, pair.treatment))
    return plan


# ---------------------------------------------------------------------------------- reports


def per_user_payload(frame: pl.DataFrame) -> dict:
    """A per-user frame as a ``weights_only``-loadable dict (tensors, and lists for strings)."""
    return {
        column.name: column.to_list() if column.dtype == pl.String else torch.from_numpy(column.to_numpy().copy())
        for column in frame.get_columns()
    }


def per_user_frame(report: dict) -> pl.DataFrame:
    """The per-user metric vectors of a report."""
    payload = report.get("per_user")
    if not payload:
        raise ValueError(f"report of {report.get('config')!r} has no per-user metrics (recorded before they were kept)")
    return pl.DataFrame(
        {name: (values if isinstance(values, list) else values.numpy()) for name, values in payload.items()}
    )


def not_comparable(a: dict, b: dict) -> str | None:
    """Why two reports cannot be compared per user, or ``None`` if they can."""
    if a.get("split") != b.get("split"):
        return f"different splits ({a.get('config')}: {a.get('split')}, {b.get('config')}: {b.get('split')})"
    data_a, data_b = ((report.get("provenance") or {}).get("data", {}).get("combined") for report in (a, b))
    if data_a is None or data_b is None:
        return "a report lacks its data fingerprint (recorded before provenance was kept)"
    if data_a != data_b:
        return f"different data ({a.get('config')}: {data_a}, {b.get('config')}: {data_b}); re-materialize both on the same data"
    if not a.get("per_user") or not b.get("per_user"):
        return "a report lacks per-user metrics"
    return None


# ---------------------------------------------------------------------------------- experiments


def report_key(chain: str) -> list[str]:
    return [chain, "metric_report"]


def _partitions(store: ArtifactStore, chain: str) -> list[str]:
    root = store.root.joinpath(*report_key(chain))
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / POINTER).exists()) if root.exists() else []


def recorded_reports(store: ArtifactStore, chain: str, include_history: bool = False) -> list[tuple[str, bool, dict]]:
    """``(experiment id, is current, report)`` for every recorded report (or only current ones); the
    experiment id is ``<config>@<version>``."""
    records = []
    for partition in _partitions(store, chain):
        current = store.current(report_key(chain), partition)
        versions = store.versions(report_key(chain), partition) if include_history else [current]
        records += [
            (f"{partition}@{version.name}", version == current, load_torch(version / "data.pt"))
            for version in versions
            if (version / "data.pt").exists()
        ]
    return records


def experiment_row(experiment_id: str, current: bool, report: dict) -> dict:
    provenance = report.get("provenance") or {}
    git = provenance.get("git") or {}
    metrics = report.get("metrics", {})
    return {
        "experiment": experiment_id,
        "current": current,
        "config": report.get("config"),
        "model": report.get("model"),
        "split": report.get("split"),
        "seed": (provenance.get("config") or {}).get("seed"),
        "recorded_at": provenance.get("recorded_at", "unknown"),
        "experiment_key": report.get("experiment_key", "unknown"),
        "data": (provenance.get("data") or {}).get("combined", "unknown"),
        "git_commit": str(git.get("commit", "unknown"))[:10] + ("+dirty" if git.get("dirty") else ""),
        "run_id": str(provenance.get("run_id", "unknown"))[:8],
        **{m: float(metrics[m]) if m in metrics else None for m in SUMMARY_METRICS},
        "gate": "pass" if (report.get("gate") or {}).get("passed") else "FAIL",
        "train_seconds": float(report.get("train_seconds", 0.0)),
        "epochs": int(report.get("epochs_run", 0)),
        "parameters": int(report.get("num_parameters", 0)),
    }


def experiments_frame(store: ArtifactStore, chain: str, include_history: bool = False) -> pl.DataFrame:
    """One row per recorded experiment of a chain (newest first within a config)."""
    rows = [experiment_row(i, c, r) for i, c, r in recorded_reports(store, chain, include_history)]
    return pl.DataFrame(rows).sort(["config", "recorded_at"], descending=[False, True]) if rows else pl.DataFrame()


def resolve_experiment(store: ArtifactStore, chain: str, ident: str) -> tuple[str, dict]:
    """A report by experiment id ``config@version`` or by config name (its current report)."""
    config, _, version = ident.partition("@")
    slot = store.slot(report_key(chain), config)
    try:
        folder = slot / version if version else store.current(report_key(chain), config)
    except ArtifactNotFoundError:
        folder = None
    if folder is None or not (folder / "data.pt").exists():
        known = [i for i, _, _ in recorded_reports(store, chain, include_history=True)]
        listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise KeyError(f"no recorded experiment {ident!r}; known: {listed or 'none (materialize metric_report first)'}")
    return f"{config}@{folder.name}", load_torch(folder / "data.pt")


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value
    return out


def compare_experiments(a: dict, b: dict, metrics: list[str], thresholds: Thresholds) -> dict:
    """Side-by-side metrics, differing config/provenance fields, and (when the two reports share
    split and data) the paired statistics of ``b`` (treatment) against ``a`` (control)."""
    from ..evaluation.stats import compare_models

    names = [m for m in a.get("metrics", {}) if m in b.get("metrics", {}) and m != "users_evaluated"]
    side = pl.DataFrame(
        {"metric": names, "A": [float(a["metrics"][m]) for m in names], "B": [float(b["metrics"][m]) for m in names]}
    ).with_columns((pl.col("B") - pl.col("A")).alias("B - A"))
    flat_a, flat_b = (_flatten("", report.get("provenance") or {}, {}) for report in (a, b))
    differences = [
        {"field": key, "A": str(flat_a.get(key, "-")), "B": str(flat_b.get(key, "-"))}
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
        and "run_id" not in key
        and not key.startswith(("recorded_at", "evaluated_in_run"))
    ]
    reason = not_comparable(a, b)
    stats = (
        None
        if reason
        else compare_models(
            per_user_frame(a),
            per_user_frame(b),
            metrics,
            alpha=thresholds.ab_alpha,
            n_resamples=thresholds.ab_bootstrap_resamples,
            primary=thresholds.ab_primary_test,
        )
    )
    differences = pl.DataFrame(differences) if differences else pl.DataFrame()
    return {"metrics": side, "differences": differences, "stats": stats, "reason": reason}


# ---------------------------------------------------------------------------------- champion


def empty_champion() -> dict:
    return {"splits": {}, "history": [], "evaluated": []}


def load_champion(store: ArtifactStore, chain: str) -> dict:
    """A chain's current champion state from the lake (an empty one if never materialized)."""
    try:
        return load_torch(store.current([chain, "champion"]) / "data.pt")
    except ArtifactNotFoundError:
        return empty_champion()


def _metric_vector(report: dict, metric: str) -> np.ndarray:
    frame = per_user_frame(report).sort("user_index")
    if metric not in frame.columns:
        raise ValueError(f"report of {report.get('config')!r} has no per-user {metric!r}")
    return frame[metric].to_numpy()


def _pvalue(test: dict, thresholds: Thresholds) -> float:
    return test["t_p"] if thresholds.ab_primary_test == "ttest" else test["wilcoxon_p"]


def gate_decision(
    candidate: dict, champion: dict, champion_report: dict | None, thresholds: Thresholds, metric: str
) -> dict:
    """Whether ``candidate`` (a report) may stand beside the champion of its split: it fails only
    when it is significantly worse than the champion on ``metric`` (per user, paired)."""
    alpha = thresholds.ab_alpha
    current = champion.get("splits", {}).get(candidate.get("split"))
    base = {"metric": metric, "alpha": alpha, "champion": current["config"] if current else None}
    if current is None:
        return {**base, "passed": True, "status": "no champion yet on this split"}
    if current["config"] == candidate.get("config"):
        return {**base, "passed": True, "status": "candidate is the champion"}
    if candidate.get("experiment_key") in set(champion.get("evaluated", [])):
        return {**base, "passed": True, "status": "unchanged experiment, already evaluated by the champion"}
    if champion_report is None:
        return {**base, "passed": True, "status": "champion's report is not materialized: not compared"}
    reason = not_comparable(champion_report, candidate)
    if reason:
        return {**base, "passed": True, "status": f"not compared: {reason}"}
    test = paired_test(
        _metric_vector(champion_report, metric),
        _metric_vector(candidate, metric),
        n_resamples=thresholds.ab_bootstrap_resamples,
    )
    p = _pvalue(test, thresholds)
    worse = p < alpha and test["mean_diff"] < 0
    return {
        **base,
        "passed": not worse,
        "status": "significantly worse than the champion" if worse else "not significantly worse than the champion",
        "p_value": p,
        **{key: test[key] for key in ("mean_diff", "ci_low", "ci_high")},
        "champion_mean": test["mean_control"],
        "candidate_mean": test["mean_treatment"],
    }


def update_champion(
    previous: dict, reports: dict[str, dict], thresholds: Thresholds, metric: str, when: str | None = None
) -> tuple[dict, list[dict]]:
    """The next champion state from the current reports, and the events of this update.

    Per split: without a (comparable) champion, the gate-passing report with the best mean
    ``metric`` is *seeded*; otherwise every gate-passing challenger on the same data is
    tested against the champion (paired, Holm across challengers) and the one with the largest
    significant gain of at least ``champion_min_improvement`` is *promoted*; else the champion is
    *retained*.
    """
    alpha = thresholds.ab_alpha
    lacking = sorted(n for n, r in reports.items() if metric not in r.get("metrics", {}))
    if lacking:
        raise ValueError(
            f"champion metric {metric!r} (thresholds.yaml) is missing from the reports of {', '.join(lacking)}"
        )
    when = when or now_iso()
    state = {
        "splits": dict(previous.get("splits", {})),
        "history": list(previous.get("history", [])),
        "evaluated": list(previous.get("evaluated", [])),
    }
    events = []
    for split in sorted({r.get("split") for r in reports.values()}):
        on_split = {n: r for n, r in reports.items() if r.get("split") == split}
        eligible = {
            n: r
            for n, r in on_split.items()
            if (r.get("gate") or {}).get("passed") and r.get("per_user") and math.isfinite(float(r["metrics"][metric]))
        }  # a NaN mean is never seeded or promoted
        current = state["splits"].get(split)
        champion_report = reports.get(current["config"]) if current else None
        if current is None or champion_report is None:
            if not eligible:
                continue
            best = max(sorted(eligible), key=lambda n: eligible[n]["metrics"][metric])
            why = "no champion yet" if current is None else f"champion {current['config']} has no current report"
            event = {
                "time": when,
                "split": split,
                "event": "seeded",
                "config": best,
                "previous": current["config"] if current else None,
                "mean": float(eligible[best]["metrics"][metric]),
                "mean_diff": None,
                "p_holm": None,
                "reason": why,
            }
        else:
            challengers = [
                n
                for n in sorted(eligible)
                if n != current["config"] and not_comparable(champion_report, eligible[n]) is None
            ]
            tests = {
                n: paired_test(
                    _metric_vector(champion_report, metric),
                    _metric_vector(eligible[n], metric),
                    n_resamples=thresholds.ab_bootstrap_resamples,
                )
                for n in challengers
            }
            adjusted = (
                dict(zip(challengers, holm([_pvalue(tests[n], thresholds) for n in challengers])))
                if challengers
                else {}
            )
            winners = [
                n
                for n in challengers
                if adjusted[n] < alpha and tests[n]["mean_diff"] > max(thresholds.champion_min_improvement, 0.0)
            ]
            if winners:
                best = max(winners, key=lambda n: tests[n]["mean_diff"])
                event = {
                    "time": when,
                    "split": split,
                    "event": "promoted",
                    "config": best,
                    "previous": current["config"],
                    "mean": tests[best]["mean_treatment"],
                    "mean_diff": tests[best]["mean_diff"],
                    "p_holm": adjusted[best],
                    "reason": f"significantly better on {metric} (Holm-adjusted p {adjusted[best]:.3g} < {alpha})",
                }
            else:
                best = current["config"]
                event = {
                    "time": when,
                    "split": split,
                    "event": "retained",
                    "config": best,
                    "previous": best,
                    "mean": float(champion_report["metrics"][metric]),
                    "mean_diff": None,
                    "p_holm": None,
                    "reason": f"no challenger significantly better on {metric} among {challengers or 'none'}",
                }
        since = when if event["event"] != "retained" else current.get("since", when)
        state["splits"][split] = {
            "config": event["config"],
            "metric": metric,
            "mean": event["mean"],
            "experiment_key": reports[event["config"]].get("experiment_key"),
            "since": since,
        }
        events.append(event)
        if event["event"] != "retained":
            state["history"].append(event)
        for report in on_split.values():
            key = report.get("experiment_key")
            if key and key not in state["evaluated"]:
                state["evaluated"].append(key)
    return state, events
