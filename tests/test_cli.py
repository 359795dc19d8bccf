"""The command line's usage: a bad flag names its subcommand, help text is plain text."""

import pytest

from spotify_engine_assets import cli


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["recommend", "--model", "x", "--bogus"], "usage: spotify-engine recommend "),
        (["experiments", "list", "--bogus"], "usage: spotify-engine experiments list "),
        (
            ["experiments", "--chain", "lastfm", "compare", "a", "b", "--bogus"],
            "usage: spotify-engine experiments compare ",
        ),
        (["train", "gat_basic", "--bogus"], "usage: spotify-engine train "),
    ],
)
def test_bad_flag_prints_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(
    "argv", [["--help"], ["recommend", "--help"], ["experiments", "compare", "--help"], ["train", "--help"]]
)
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spotify-engine") and "`" not in out


def test_demo_output_separates_elapsed_from_stage_time(data_lake, capsys):
    from spotify_engine_assets.runner import StageResult

    results = [
        StageResult("data", True, 4.14, {"synthetic_world": 1.5}),
        StageResult("model lightgcn", False, 2.0, error="boom"),
    ]
    assert results[0].line(elapsed=12.3) == "[   12.3 s] data: ok (took 4.1 s)"
    assert results[1].line() == "model lightgcn: FAILED: boom (took 2.0 s)"
    cli._print_summary(results, "listening")  # no comparison report in an empty lake: times only
    out = capsys.readouterr().out
    assert "synthetic_world" in out and out.rstrip().endswith("total                      6.1  (2 runs)")


def test_home_registers_every_chains_configs_as_partitions(tmp_path, monkeypatch, capsys):
    """Before anything ran, `spotify-engine home` (run by `make ui`) makes every registry config a
    partition, so the UI lists untrained configs as missing rather than "0 partitions"."""
    import dagster as dg

    from spotify_engine_assets.core.storage.paths import DATA_LAKE_ENV
    from spotify_engine_assets.defs import lastfm, listening, playlists

    monkeypatch.setenv(DATA_LAKE_ENV, str(tmp_path / "lake"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["home"]) == 0
    home = capsys.readouterr().out.strip()
    assert home == str((tmp_path / "lake" / "dagster_home").resolve())
    with dg.DagsterInstance.from_config(home) as instance:
        for chain in (listening.CHAIN, playlists.CHAIN, lastfm.CHAIN):
            names = set(instance.get_dynamic_partitions(chain.partitions))
            assert names == set(chain.dataset.registry.full(tmp_path / "lake")) and names, chain.name
    assert cli.main(["home"]) == 0  # a second call adds nothing and does not fail
