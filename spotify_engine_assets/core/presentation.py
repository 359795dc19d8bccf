"""How numbers and configs read in the Dagster UI's metadata.

What Dagster 1.13's UI does with metadata (``dagster-webserver`` 1.13.27, the asset page's metadata
table, in the order the entries are given):

* float and int entries show as they are and are charted across materializations under the
  table's "Plots" toggle: key results go there, metrics to :data:`METRIC_DECIMALS` decimals, other
  quantities to :data:`SIGNIFICANT` significant digits;
* markdown and JSON entries render inline when shorter than :data:`INLINE_LIMIT` characters,
  otherwise behind "[Show Markdown]" / "[Show JSON]";
* there is no image metadata type: a plot can only be a markdown image (a base64 PNG is far
  over the inline limit, so it always opens in a dialog), which is why every plotted quantity
  also has numeric entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SIGNIFICANT = 4  # significant digits kept of a float shown in metadata (seconds, ms, MiB, ratios)
METRIC_DECIMALS = 4  # decimals of a metric or share in [0, 1], as the markdown tables show them
INLINE_LIMIT = 1000  # characters: shorter markdown / JSON is shown inline in the metadata table
SUMMARY_SKIPPED = ("name", "description", "model")  # shown elsewhere, not part of a config's summary
# the settings a config summary always shows first (where the config has them)
HEADLINE = ("split", "trainer", "loss", "embedding_dim", "num_layers", "lr", "max_epochs", "patience")


def rounded(value: float, digits: int = SIGNIFICANT) -> float:
    """``value`` to ``digits`` significant digits (0.2154930981618541 -> 0.2155, 1234.56 -> 1235.0)."""
    return float(f"{float(value):.{digits}g}")


def metric_value(value: float) -> float:
    """A metric, score or share (recall, NDCG, AUC, a rate) to :data:`METRIC_DECIMALS` decimals, as the
    markdown tables print it (0.09916 -> 0.0992)."""
    return round(float(value), METRIC_DECIMALS)


def tidy(value: Any, digits: int = SIGNIFICANT) -> Any:
    """``value`` with every float inside (dicts, lists, tuples) rounded to ``digits`` significant digits."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return rounded(value, digits)
    if isinstance(value, Mapping):
        return {key: tidy(item, digits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [tidy(item, digits) for item in value]
    return value


def config_hash(dump: Mapping[str, Any]) -> str:
    """First 12 hex characters of the SHA-256 of a config dump (sorted JSON): the same settings, the same hash."""
    return hashlib.sha256(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_summary(dump: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """One line of a config: its :data:`HEADLINE` settings, then those that differ from its class's
    ``defaults`` (a nested config by its model), e.g. ``"split random · loss bpr · lr 0.01 · ..."``."""
    changed = sorted(
        key
        for key, value in dump.items()
        if key not in SUMMARY_SKIPPED and key not in HEADLINE and (key not in defaults or defaults[key] != value)
    )
    shown = [key for key in HEADLINE if dump.get(key) is not None] + changed
    return " · ".join(f"{key} {_short(dump[key])}" for key in shown) or "defaults"


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("model") or value.get("name") or "{...}")
    return str(tidy(value))


# Asset groups: ``<chain>_<domain label>``. The zoomed-out lineage graph cuts a group's name longer
# than GROUP_NAME_LIMIT characters in the middle ("playli…_ingestion"), so long domains get short labels.
GROUP_NAME_LIMIT = 17
GROUP_LABELS = {
    "ingestion": "ingest",
    "training": "train",
    "evaluation": "eval",
    "experiments": "compare",
    "optimization": "hpo",
    "explanations": "explain",
}


def group_name(chain: str, domain: str) -> str:
    """The asset group of a chain's ``domain`` (``listening``, ``ingestion`` -> ``listening_ingest``)."""
    return f"{chain}_{GROUP_LABELS.get(domain, domain)}"
