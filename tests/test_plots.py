"""Plots for Dagster markdown metadata: each is a decodable PNG embedded in markdown; the SQL
models' data-quality profile counts NULLs and distinct values per column."""

import base64
import io
import re

import duckdb
import numpy as np
import pytest
from PIL import Image

from spotify_engine_assets.core import plots
from spotify_engine_assets.defs.sql import column_profile, quality_metadata

MARKDOWN_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\(data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)\)$")


def _image(markdown: str) -> tuple[str, Image.Image]:
    match = MARKDOWN_IMAGE.match(markdown)
    assert match, markdown[:80]
    image = Image.open(io.BytesIO(base64.b64decode(match["data"])))
    image.load()
    return match["alt"], image


@pytest.mark.parametrize(
    "make, alt",
    [
        (
            lambda: plots.count_bars({"raw.plays": 8000, "raw.users": 150}, "rows per raw table", log=True),
            "rows per raw table",
        ),
        (lambda: plots.data_quality(10, {"a": 0, "b": 3}, {"a": 10, "b": 2}, "t: quality"), "t: quality"),
        (lambda: plots.histogram(np.arange(100), "songs per user", "songs"), "songs per user"),
        (
            lambda: plots.split_sizes(
                {"random": {"train": 70, "valid": 15, "test": 15}, "temporal": {"train": 60, "valid": 20, "test": 20}},
                "split sizes",
            ),
            "split sizes",
        ),
        (
            lambda: plots.grouped_bars(
                {"lightgcn": {"ndcg@10": 0.2, "recall@10": 0.3}, "most_popular": {"ndcg@10": 0.1}},
                ["ndcg@10", "recall@10"],
                "config vs baselines",
            ),
            "config vs baselines",
        ),
        (
            lambda: plots.difference_distributions(
                {"ndcg@10": [0.1, -0.2, 0.05], "recall@10": []}, "A/B per-user differences"
            ),
            "A/B per-user differences",
        ),
    ],
)
def test_plots_are_png_markdown(make, alt):
    found_alt, image = _image(make())
    assert found_alt == alt
    assert image.format == "PNG" and image.width > 200 and image.height > 100


def test_column_profile_counts_nulls_and_distinct_values():
    con = duckdb.connect()
    try:
        con.execute(
            'CREATE SCHEMA staging; CREATE TABLE staging.t AS SELECT * FROM (VALUES (1, NULL), (2, \'x\'), (2, NULL)) v("id", "odd ""name""")'
        )
        columns = [(row[0], row[1]) for row in con.sql("DESCRIBE staging.t").fetchall()]
        nulls, distinct = column_profile(con, "staging.t", columns)
        assert nulls == {"id": 0, 'odd "name"': 2}
        assert distinct == {"id": 2, 'odd "name"': 1}
        assert column_profile(con, "staging.missing", columns) is None  # not a failed model: no profile
    finally:
        con.close()
    metadata = quality_metadata("staging.t", 3, (nulls, distinct))
    assert metadata["null_cells"] == 2 and metadata["columns"] == 2
    assert '| odd "name" | 2 | 66.7 | 1 |' in metadata["profile"].value  # NULLs, NULL %, distinct
    alt, _ = _image(metadata["data_quality"].value)
    assert alt == "staging.t: NULL and distinct share per column"
    assert quality_metadata("staging.t", 3, None) == {}
