"""Statistics for A/B comparisons of two models on per-user metric vectors.

Paired design (both models scored on the same users of the same split): paired t-test and
Wilcoxon signed-rank of treatment minus control, a seeded percentile-bootstrap 95% confidence
interval of the mean difference, paired Cohen's d (``d_z``) and Holm's step-down correction across
the metrics compared (:func:`holm`).

Split-users design (the classic online A/B test): users are randomly assigned to two halves, one
served by the control and the other by the treatment, and the two independent samples are compared
with Welch's t-test.

Verdict: ``better`` / ``worse`` when the Holm-adjusted p-value of the primary test is below
``alpha`` (the sign of the mean difference decides which), else ``no detectable difference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy import stats

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
PRIMARY_TESTS = {"ttest": "t_p_holm", "wilcoxon": "wilcoxon_p_holm"}
# compare_models' split-users columns, from split_users_test's keys
WELCH_COLUMNS = {
    "welch_mean_diff": "mean_diff",
    "welch_p": "welch_p",
    "welch_ci_low": "ci_low",
    "welch_ci_high": "ci_high",
}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in the input order.

    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the p-values sorted ascending.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError("holm expects a flat sequence of p-values")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def cohens_d_paired(control: np.ndarray, treatment: np.ndarray) -> float:
    """``mean(d) / sd(d)`` with ``d = treatment - control`` (0 when every difference is equal)."""
    diff = np.asarray(treatment, dtype=float) - np.asarray(control, dtype=float)
    if diff.size < 2:
        return 0.0
    sd = diff.std(ddof=1)
    return float(diff.mean() / sd) if sd > 0 else 0.0


def _check_pair(control: np.ndarray, treatment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    control, treatment = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    if control.shape != treatment.shape or control.ndim != 1:
        raise ValueError(f"paired vectors must be 1-d and of equal length, got {control.shape} and {treatment.shape}")
    if control.size < 2:
        raise ValueError(f"need at least 2 paired users, got {control.size}")
    if np.isnan(control).any() or np.isnan(treatment).any():
        raise ValueError("per-user metric vectors contain NaN")
    return control, treatment


def paired_test(
    control: np.ndarray, treatment: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired t-test, Wilcoxon signed-rank, bootstrap CI of the mean difference and Cohen's d."""
    control, treatment = _check_pair(control, treatment)
    diff = treatment - control
    result = {
        "n": int(diff.size),
        "mean_control": float(control.mean()),
        "mean_treatment": float(treatment.mean()),
        "mean_diff": float(diff.mean()),
        "cohens_d": cohens_d_paired(control, treatment),
    }
    if not np.any(diff):  # identical models: nothing to test, no evidence of a difference
        result.update(t_stat=0.0, t_p=1.0, wilcoxon_stat=0.0, wilcoxon_p=1.0, ci_low=0.0, ci_high=0.0)
        return result
    t = stats.ttest_rel(treatment, control)
    w = stats.wilcoxon(treatment, control, zero_method="wilcox")
    result.update(
        t_stat=float(t.statistic) if np.isfinite(t.statistic) else 0.0,
        t_p=float(t.pvalue) if np.isfinite(t.pvalue) else 1.0,
        wilcoxon_stat=float(w.statistic),
        wilcoxon_p=float(w.pvalue),
    )
    low, high = bootstrap_mean_ci(diff, n_resamples=n_resamples, confidence=confidence, seed=seed)
    result.update(ci_low=low, ci_high=high)
    return result


def bootstrap_mean_ci(
    values: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded)."""
    values = np.asarray(values, dtype=float)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    interval = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def split_users_test(
    control: np.ndarray, treatment: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Users randomly assigned (seeded) to two halves, one half scored by each model; Welch's
    t-test and a bootstrap CI of the difference of the two group means."""
    control, treatment = _check_pair(control, treatment)
    order = np.random.default_rng(seed).permutation(control.size)
    group_a, group_b = order[: control.size // 2], order[control.size // 2 :]
    a, b = control[group_a], treatment[group_b]
    result = {"n_control": int(a.size), "n_treatment": int(b.size), "mean_diff": float(b.mean() - a.mean())}
    if np.ptp(np.concatenate([a, b])) == 0:
        result.update(welch_stat=0.0, welch_p=1.0, ci_low=result["mean_diff"], ci_high=result["mean_diff"])
        return result
    test = stats.ttest_ind(b, a, equal_var=False)
    interval = stats.bootstrap(
        (b, a),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed + 1),
    ).confidence_interval
    result.update(
        welch_stat=float(test.statistic) if np.isfinite(test.statistic) else 0.0,
        welch_p=float(test.pvalue) if np.isfinite(test.pvalue) else 1.0,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
    )
    return result


def verdict(adjusted_p: float, mean_diff: float, alpha: float) -> str:
    if adjusted_p < alpha and mean_diff > 0:
        return BETTER
    if adjusted_p < alpha and mean_diff < 0:
        return WORSE
    return NO_DIFFERENCE


def compare_models(
    control: pl.DataFrame,
    treatment: pl.DataFrame,
    metrics: Sequence[str],
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    key: str = "user_index",
    primary: str = "ttest",
) -> pl.DataFrame:
    """One row per metric: paired statistics with Holm across ``metrics``, the verdict, and the
    split-users (Welch) variant with its own Holm correction and verdict.

    ``control`` and ``treatment`` are per-user frames (``key`` plus one column per metric); they
    must hold the same users (same split and data). ``primary`` (``ttest`` or ``wilcoxon``) is
    the paired test whose Holm-adjusted p-value decides the verdict.
    """
    if primary not in PRIMARY_TESTS:
        raise ValueError(f"primary test must be one of {sorted(PRIMARY_TESTS)}, got {primary!r}")
    if not metrics:
        raise ValueError("no metrics to compare")
    for name, frame in (("control", control), ("treatment", treatment)):
        missing = [m for m in (key, *metrics) if m not in frame.columns]
        if missing:
            raise ValueError(f"{name} per-user frame lacks columns {missing}")
    joined = control.select(key, *metrics).join(treatment.select(key, *metrics), on=key, how="inner", suffix="__t")
    if joined.height != control.height or joined.height != treatment.height:
        raise ValueError(
            f"control ({control.height} users) and treatment ({treatment.height} users) do not cover the same "
            f"users ({joined.height} in common): compare reports of the same split and data"
        )
    rows = []
    for index, metric in enumerate(metrics):
        c, t = joined[metric].to_numpy(), joined[f"{metric}__t"].to_numpy()
        paired = paired_test(c, t, n_resamples=n_resamples, seed=seed + index)
        welch = split_users_test(c, t, n_resamples=n_resamples, seed=seed + index)
        rows.append({"metric": metric, **paired, **{column: welch[key] for column, key in WELCH_COLUMNS.items()}})
    frame = pl.DataFrame(rows)
    frame = frame.with_columns(
        [pl.Series(f"{column}_holm", holm(frame[column].to_list())) for column in ("t_p", "wilcoxon_p", "welch_p")]
    )
    return frame.with_columns(
        pl.Series("verdict", [verdict(p, d, alpha) for p, d in zip(frame[PRIMARY_TESTS[primary]], frame["mean_diff"])]),
        pl.Series(
            "welch_verdict", [verdict(p, d, alpha) for p, d in zip(frame["welch_p_holm"], frame["welch_mean_diff"])]
        ),
    )
