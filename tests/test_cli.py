"""The command line's usage: a bad flag names its subcommand, help text is plain text."""

import pytest

from spotify_engine_assets import cli


@pytest.mark.parametrize(("argv", "usage"), [
    (["recommend", "--model", "x", "--bogus"], "usage: spotify-engine recommend "),
    (["experiments", "list", "--bogus"], "usage: spotify-engine experiments list "),
    (["experiments", "--chain", "lastfm", "compare", "a", "b", "--bogus"], "usage: spotify-engine experiments compare "),
    (["train", "gat_basic", "--bogus"], "usage: spotify-engine train "),
])
def test_bad_flag_prints_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("argv", [["--help"], ["recommend", "--help"], ["experiments", "compare", "--help"], ["train", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spotify-engine") and "`" not in out
