"""Small matplotlib plots rendered to PNG for Dagster markdown metadata (no display needed)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def figure_markdown(fig, alt: str) -> str:
    """Embed a figure as a base64 PNG image in markdown, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def training_curve(history: list[dict], title: str) -> str:
    """Loss and validation Recall@10 per epoch."""
    fig, loss_axis = plt.subplots(figsize=(6, 3))
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(epochs, [row["loss"] for row in history], color="tab:blue", label="BPR loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    recall_axis = loss_axis.twinx()
    recall_axis.plot(epochs, [row["valid_recall@10"] for row in history], color="tab:orange", label="valid Recall@10")
    recall_axis.set_ylabel("valid Recall@10", color="tab:orange")
    loss_axis.set_title(title)
    return figure_markdown(fig, f"training curve {title}")


def metric_bars(values: dict[str, dict[str, float]], metric: str, title: str) -> str:
    """One bar per config for ``metric``."""
    names = list(values)
    fig, axis = plt.subplots(figsize=(6, 3))
    axis.bar(names, [values[name].get(metric, 0.0) for name in names], color="tab:green")
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.tick_params(axis="x", rotation=20)
    return figure_markdown(fig, title)


def hour_profile(counts: list[int], title: str) -> str:
    """Plays per hour of day."""
    fig, axis = plt.subplots(figsize=(6, 2.5))
    axis.bar(range(len(counts)), counts, color="tab:purple")
    axis.set_xlabel("hour of day")
    axis.set_ylabel("plays")
    axis.set_title(title)
    return figure_markdown(fig, title)


def frame_markdown(frame, max_rows: int = 10, float_digits: int = 4) -> str:
    """A polars frame as a markdown table (for metadata previews and summaries)."""
    head = frame.head(max_rows)

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)
