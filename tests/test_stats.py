"""A/B statistics against hand values and scipy.stats; planted effects are detected, identical
models and null simulations give no false positives at the chosen alpha."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from spotify_engine_assets.core.evaluation.stats import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    bootstrap_mean_ci,
    cohens_d_paired,
    compare_models,
    holm,
    paired_test,
    split_users_test,
    verdict,
)

ALPHA = 0.05


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([]) == []


def test_holm_is_at_least_raw_and_at_most_bonferroni():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=12)
    adjusted = np.array(holm(p))
    assert np.all(adjusted >= p - 1e-15)
    assert np.all(adjusted <= np.minimum(1.0, p * p.size) + 1e-15)
    assert np.all(np.diff(adjusted[np.argsort(p)]) >= 0)  # monotone in the raw order


def test_holm_rejects_invalid_pvalues():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([float("nan")])


def test_cohens_d_paired_hand_computed():
    assert cohens_d_paired(np.zeros(3), np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # mean 2, sd 1
    assert cohens_d_paired(np.ones(4), np.ones(4) * 3) == 0.0  # constant difference: no spread


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(1)
    control = rng.normal(0.3, 0.1, 80)
    treatment = control + rng.normal(0.01, 0.05, 80)
    result = paired_test(control, treatment, n_resamples=500)
    assert result["t_p"] == pytest.approx(stats.ttest_rel(treatment, control).pvalue)
    assert result["t_stat"] == pytest.approx(stats.ttest_rel(treatment, control).statistic)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(treatment, control).pvalue)
    diff = treatment - control
    assert result["mean_diff"] == pytest.approx(diff.mean())
    assert result["cohens_d"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert result["ci_low"] < diff.mean() < result["ci_high"]


def test_planted_improvement_is_detected():
    rng = np.random.default_rng(2)
    control = rng.uniform(0, 1, 400)
    treatment = control + 0.03 + rng.normal(0, 0.05, 400)
    result = paired_test(control, treatment, n_resamples=1000)
    assert result["t_p"] < 1e-6 and result["wilcoxon_p"] < 1e-6
    assert result["ci_low"] > 0 and result["ci_low"] < 0.03 < result["ci_high"]
    assert verdict(result["t_p"], result["mean_diff"], ALPHA) == BETTER
    worse = paired_test(treatment, control, n_resamples=200)
    assert verdict(worse["t_p"], worse["mean_diff"], ALPHA) == WORSE


def test_identical_models_have_no_difference():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, 200)
    result = paired_test(values, values.copy())
    assert result["t_p"] == 1.0 and result["wilcoxon_p"] == 1.0
    assert result["mean_diff"] == 0.0 and result["ci_low"] == 0.0 == result["ci_high"]
    frame = pl.DataFrame({"user_index": np.arange(200), "ndcg@10": values, "recall@10": values**2})
    table = compare_models(frame, frame, ["ndcg@10", "recall@10"], alpha=ALPHA, n_resamples=200)
    assert set(table["verdict"]) == {NO_DIFFERENCE}
    assert set(table["welch_verdict"]) == {NO_DIFFERENCE}  # the two random halves of one model


def test_no_false_positives_beyond_alpha_under_the_null():
    """Two models of equal expected quality (independent per-user noise), three metrics:
    with Holm, the share of experiments declaring any difference stays near or below alpha."""
    rng = np.random.default_rng(4)
    simulations, users, false_positive = 200, 150, 0
    for _ in range(simulations):
        base = rng.uniform(0, 1, users)
        p_values = []
        for _metric in range(3):
            control = base + rng.normal(0, 0.2, users)
            treatment = base + rng.normal(0, 0.2, users)
            p_values.append(stats.ttest_rel(treatment, control).pvalue)
        false_positive += min(holm(p_values)) < ALPHA
    rate = false_positive / simulations
    assert rate <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / simulations), rate


def test_split_users_matches_scipy_welch_on_the_same_assignment():
    rng = np.random.default_rng(5)
    control = rng.normal(0.2, 0.1, 101)
    treatment = rng.normal(0.25, 0.1, 101)
    result = split_users_test(control, treatment, n_resamples=300, seed=9)
    order = np.random.default_rng(9).permutation(101)
    a, b = control[order[:50]], treatment[order[50:]]
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert (result["n_control"], result["n_treatment"]) == (50, 51)
    assert result["welch_p"] == pytest.approx(welch.pvalue)
    assert result["mean_diff"] == pytest.approx(b.mean() - a.mean())
    assert result["ci_low"] < result["mean_diff"] < result["ci_high"]


def test_bootstrap_ci_covers_the_mean():
    rng = np.random.default_rng(6)
    values = rng.normal(1.0, 1.0, 300)
    low, high = bootstrap_mean_ci(values, n_resamples=1000)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * half_width, rel=0.2)


def test_compare_models_holm_and_verdicts():
    rng = np.random.default_rng(7)
    users = 300
    control = pl.DataFrame(
        {"user_index": np.arange(users), "good": rng.uniform(size=users), "same": rng.uniform(size=users)}
    )
    treatment = control.with_columns(
        (pl.col("good") + 0.1 + pl.Series(rng.normal(0, 0.05, users))).alias("good"),
        (pl.col("same") + pl.Series(rng.normal(0, 0.05, users))).alias("same"),
    ).sample(fraction=1.0, shuffle=True, seed=1)  # row order must not matter
    table = compare_models(control, treatment, ["good", "same"], alpha=ALPHA, n_resamples=300)
    rows = {row["metric"]: row for row in table.iter_rows(named=True)}
    assert rows["good"]["verdict"] == BETTER
    assert rows["good"]["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert rows["same"]["verdict"] == NO_DIFFERENCE
    raw = [rows["good"]["t_p"], rows["same"]["t_p"]]
    assert [rows["good"]["t_p_holm"], rows["same"]["t_p_holm"]] == pytest.approx(holm(raw))
    by_wilcoxon = compare_models(control, treatment, ["good", "same"], alpha=ALPHA, n_resamples=100, primary="wilcoxon")
    assert by_wilcoxon["verdict"].to_list() == [BETTER, NO_DIFFERENCE]


def test_compare_models_rejects_bad_input():
    frame = pl.DataFrame({"user_index": [0, 1, 2], "ndcg@10": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="same users"):
        compare_models(frame, frame.head(2), ["ndcg@10"])
    with pytest.raises(ValueError, match=r"lacks columns \['mrr@10'\]"):
        compare_models(frame, frame, ["mrr@10"])
    with pytest.raises(ValueError, match="primary test"):
        compare_models(frame, frame, ["ndcg@10"], primary="ztest")
    with pytest.raises(ValueError, match="at least 2"):
        paired_test(np.array([0.1]), np.array([0.2]))
    with pytest.raises(ValueError, match="NaN"):
        paired_test(np.array([0.1, np.nan]), np.array([0.2, 0.3]))
