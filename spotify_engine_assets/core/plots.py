"""Small matplotlib plots rendered to PNG for Dagster markdown metadata (no display needed)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def figure_markdown(fig, alt: str) -> str:
    """Embed a figure as a base64 PNG image in markdown, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def _finish(fig, axis, title: str, xlabel: str = "", ylabel: str = "", alt: str = "") -> str:
    """Label and title ``axis``, then embed the figure (alt text: ``alt``, default the title)."""
    if xlabel:
        axis.set_xlabel(xlabel)
    if ylabel:
        axis.set_ylabel(ylabel)
    axis.set_title(title)
    return figure_markdown(fig, alt or title)


def training_curve(history: list[dict], title: str, monitor: str | None = None) -> str:
    """Training loss per epoch and the validation metric ``monitor`` on validation epochs."""
    fig, loss_axis = plt.subplots(figsize=(6, 3))
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(epochs, [row["loss"] for row in history], color="tab:blue", label="loss")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    validated = [row for row in history if monitor and f"valid_{monitor}" in row]
    if validated:  # the simple trainer validates nothing
        valid_axis = loss_axis.twinx()
        valid_axis.plot(
            [row["epoch"] for row in validated],
            [row[f"valid_{monitor}"] for row in validated],
            color="tab:orange",
            marker=".",
            label=f"valid {monitor}",
        )
        valid_axis.set_ylabel(f"valid {monitor}", color="tab:orange")
    return _finish(fig, loss_axis, title, "epoch", alt=f"training curve {title}")


def metric_bars(values: dict[str, dict[str, float]], metric: str, title: str) -> str:
    """One bar per config for ``metric``."""
    fig, axis = plt.subplots(figsize=(6, 3))
    axis.bar(list(values), [row.get(metric, 0.0) for row in values.values()], color="tab:green")
    axis.tick_params(axis="x", rotation=20)
    return _finish(fig, axis, title, ylabel=metric)


def hour_profile(counts: list[int], title: str) -> str:
    """Plays per hour of day."""
    fig, axis = plt.subplots(figsize=(6, 2.5))
    axis.bar(range(len(counts)), counts, color="tab:purple")
    return _finish(fig, axis, title, "hour of day", "plays")


def frame_markdown(frame, max_rows: int = 10, float_digits: int = 4) -> str:
    """A polars frame as a markdown table (for metadata previews and summaries)."""
    head = frame.head(max_rows)

    def cell(value) -> str:
        if value is None:  # a blank cell, not "None"
            return ""
        return f"{value:.{float_digits}f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)


def count_bars(counts: dict[str, float], title: str, xlabel: str = "count", log: bool = False) -> str:
    """Horizontal bars, one per label (row counts per table, node and edge counts per type)."""
    labels = list(counts)
    fig, axis = plt.subplots(figsize=(6, 0.3 * len(labels) + 1.2))
    axis.barh(labels, [counts[label] for label in labels], color="tab:blue", log=log)
    for row, label in enumerate(labels):
        axis.annotate(
            f"{counts[label]:,}",
            (counts[label], row),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    axis.invert_yaxis()
    axis.margins(x=0.15)
    return _finish(fig, axis, title, xlabel)


def data_quality(row_count: int, null_counts: dict[str, int], distinct_counts: dict[str, int], title: str) -> str:
    """Data-quality summary of one table: per column, the share of NULLs and of distinct values."""
    columns = list(null_counts)
    rows = max(row_count, 1)
    fig, axis = plt.subplots(figsize=(6, 0.3 * len(columns) + 1.4))
    positions = range(len(columns))
    # approximate distinct counts (HyperLogLog) may overshoot the row count slightly: capped at 1
    axis.barh(
        [p - 0.2 for p in positions],
        [min(distinct_counts.get(c, 0) / rows, 1.0) for c in columns],
        height=0.4,
        color="tab:green",
        label="distinct / rows",
    )
    axis.barh(
        [p + 0.2 for p in positions],
        [null_counts[c] / rows for c in columns],
        height=0.4,
        color="tab:red",
        label="NULL / rows",
    )
    axis.set_yticks(list(positions), columns, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.05)
    axis.legend(fontsize=7, loc="lower right")
    return _finish(fig, axis, title, f"share of {row_count:,} rows")


def histogram(values, title: str, xlabel: str, bins: int = 30, log: bool = False) -> str:
    """Distribution of one quantity (e.g. listens per user or per song)."""
    fig, axis = plt.subplots(figsize=(6, 2.8))
    axis.hist(values, bins=bins, color="tab:cyan", edgecolor="white", log=log)
    return _finish(fig, axis, title, xlabel, "count")


def split_sizes(parts: dict[str, dict[str, int]], title: str) -> str:
    """Stacked train / valid / test sizes, one bar per split strategy."""
    strategies = list(parts)
    fig, axis = plt.subplots(figsize=(6, 0.5 * len(strategies) + 1.2))
    left = [0] * len(strategies)
    for part, color in (("train", "tab:blue"), ("valid", "tab:orange"), ("test", "tab:green")):
        sizes = [parts[s].get(part, 0) for s in strategies]
        axis.barh(strategies, sizes, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, sizes)]
    axis.invert_yaxis()
    axis.legend(fontsize=7, ncol=3, loc="lower right")
    return _finish(fig, axis, title, "interactions")


def grouped_bars(values: dict[str, dict[str, float]], metrics: list[str], title: str) -> str:
    """Metrics side by side for a few series (e.g. a config against most-popular and random)."""
    series = list(values)
    width = 0.8 / max(len(series), 1)
    fig, axis = plt.subplots(figsize=(7, 3))
    for index, name in enumerate(series):
        axis.bar(
            [m + (index - (len(series) - 1) / 2) * width for m in range(len(metrics))],
            [values[name].get(metric, 0.0) for metric in metrics],
            width=width,
            label=name,
        )
    axis.set_xticks(range(len(metrics)), metrics, rotation=20, fontsize=8)
    axis.legend(fontsize=7)
    return _finish(fig, axis, title)


def difference_distributions(differences: dict[str, list[float]], title: str, bins: int = 30) -> str:
    """A/B: per-user treatment - control differences, one histogram per pair or metric, with the mean."""
    names = list(differences)
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.8 * len(names) + 0.6), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        values = list(differences[name])
        axis.hist(values, bins=bins, color="tab:gray", edgecolor="white")
        axis.axvline(0.0, color="black", linewidth=0.8)
        if values:
            axis.axvline(sum(values) / len(values), color="tab:red", linewidth=1.2, label="mean")
            axis.legend(fontsize=7)
        axis.set_title(name, fontsize=8)
    axes[-1, 0].set_xlabel("treatment - control per user")
    fig.suptitle(title)
    fig.tight_layout()
    return figure_markdown(fig, title)


def pareto_front(
    x: list[float],
    y: list[float],
    color: list[float],
    on_front: list[bool],
    title: str,
    xlabel: str,
    ylabel: str,
    color_label: str,
) -> str:
    """Trade-off of a multi-objective study: one point per trial (``x`` against ``y``, colored by
    ``color``), the Pareto-front points ringed in red and joined in ``x`` order."""
    if not (len(x) == len(y) == len(color) == len(on_front)):
        raise ValueError(
            f"pareto_front: lengths differ: x {len(x)}, y {len(y)}, color {len(color)}, on_front {len(on_front)}"
        )
    fig, axis = plt.subplots(figsize=(6, 3.6))
    points = axis.scatter(x, y, c=color, cmap="viridis", s=28, zorder=2)
    fig.colorbar(points, ax=axis, label=color_label)
    front = sorted((xi, yi) for xi, yi, keep in zip(x, y, on_front) if keep)
    if front:
        axis.scatter(
            [p[0] for p in front],
            [p[1] for p in front],
            s=90,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.4,
            label="Pareto front",
            zorder=3,
        )
        axis.plot([p[0] for p in front], [p[1] for p in front], color="tab:red", lw=0.8, ls="--", zorder=1)
        axis.legend(fontsize=7)
    return _finish(fig, axis, title, xlabel, ylabel)


def difference_plot(table, title: str) -> str:
    """Mean treatment - control difference with its bootstrap 95% CI, one row per pair and metric
    (a frame with pair, metric, mean_diff, ci_low, ci_high, verdict)."""
    labels = [f"{p} | {m}" for p, m in zip(table["pair"], table["metric"])]
    fig, axis = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    colors = {"better": "tab:green", "worse": "tab:red"}
    for row, record in enumerate(table.iter_rows(named=True)):
        color = colors.get(record["verdict"], "tab:gray")
        axis.errorbar(
            record["mean_diff"],
            row,
            xerr=[[record["mean_diff"] - record["ci_low"]], [record["ci_high"] - record["mean_diff"]]],
            fmt="o",
            color=color,
            capsize=3,
        )
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.invert_yaxis()
    return _finish(fig, axis, title, "treatment - control (mean over users, 95% bootstrap CI)")


def history_plot(
    numbers: list[int], values: list[float], best: list[float], pruned: list[int], title: str, ylabel: str
) -> str:
    """A study's optimization history: each completed trial's value and the best so far; grey
    lines mark pruned trials."""
    fig, axis = plt.subplots(figsize=(6, 3.2))
    axis.scatter(numbers, values, s=14, color="tab:blue", label="completed trial")
    axis.step(numbers, best, where="post", color="tab:red", label="best so far")
    for number in pruned:
        axis.axvline(number, color="0.85", lw=0.8, zorder=0)
    axis.legend(fontsize=7)
    return _finish(fig, axis, title, "trial (grey lines: pruned)", ylabel)
