"""Diversity re-ranking at serving time (core/serving/diversity.py): the per-artist cap, MMR, the
item similarity and ILD, batch against single-user ranking, and the ``recommend`` options."""

from __future__ import annotations

import json
import re

import pytest
import torch

from spotify_engine_assets import cli
from spotify_engine_assets.core.evaluation.metrics import intra_list_distance
from spotify_engine_assets.core.serving.diversity import (
    Diversify,
    ItemSimilarity,
    artist_cap,
    artist_spread,
    mean_pairwise_distance,
    mmr,
    occurrence,
    pool_size,
    rerank,
    rerank_scores,
)
from spotify_engine_assets.core.serving.recommend import rank_songs, rank_users, recommendation_frame

torch.set_num_threads(1)

# 12 items: artist of each, genres of each (artist 0 -> genre 0, artist 1 -> genre 0 and 1, ...)
ARTIST = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, -1, 4, 4])
GENRES = torch.zeros(12, 3)
for item, genres in enumerate([[0], [0], [0], [0], [0, 1], [0, 1], [1], [1], [2], [2], [], [1]]):
    GENRES[item, genres] = 1.0


def similarity(artist_weight: float = 0.5) -> ItemSimilarity:
    return ItemSimilarity(ARTIST, GENRES, artist_weight)


def test_similarity_is_the_cosine_of_artist_and_genre_features():
    sim = similarity()
    items = torch.arange(12).unsqueeze(0)
    pairwise = sim.pairwise(items, items)[0]
    features = torch.nn.functional.normalize(sim.features(), dim=1)
    assert torch.allclose(pairwise, features @ features.T, atol=1e-6)
    assert pairwise[0, 1] == pytest.approx(1.0)  # same artist, same genres
    assert pairwise[0, 4] == pytest.approx(0.5 / 2**0.5)  # other artist: (1 - a) |{0}| / sqrt(1 * 2)
    assert pairwise[6, 8] == pytest.approx(0.0)  # no artist, no genre in common
    assert pairwise[8, 9] == pytest.approx(0.5**0.5)  # item 9 has no artist: genre part renormalised
    assert pairwise[10, 11] == pytest.approx(0.5**0.5)  # item 10 has no genre: artist part renormalised
    assert pairwise.diagonal().tolist() == pytest.approx([1.0] * 12)
    # the sentinel (past the catalogue) is at similarity 0 to everything
    assert sim.pairwise(torch.tensor([[0, 12]]), torch.tensor([[0, 12]]))[0].flatten().tolist() == pytest.approx(
        [1.0, 0.0, 0.0, 0.0]
    )


def test_ild_is_one_definition_for_the_report_and_serving():
    sim = similarity()
    topk = torch.tensor([[0, 1, 2, 3], [0, 4, 6, 8], [0, 1, 12, 12], [0, 12, 12, 12]])
    served = sim.intra_list_distance(topk, 4)
    report = intra_list_distance(topk, sim.features(), 4)
    assert torch.allclose(served, report, atol=1e-6)
    assert served.tolist()[0] == pytest.approx(0.0)  # one artist, one genre: no diversity
    assert served.tolist()[2] == pytest.approx(0.0)  # two valid items of one artist; empty slots skipped
    assert served.tolist()[3] == 0.0  # fewer than two items
    # list 1: pairs (0,4) 0.5/sqrt2, (0,6) 0, (0,8) 0, (4,6) 0.5/sqrt2, (4,8) 0, (6,8) 0
    assert served.tolist()[1] == pytest.approx(1.0 - 2 * 0.5 / 2**0.5 / 6)
    valid = torch.tensor([[True, True, False]])
    assert mean_pairwise_distance(torch.full((1, 3, 3), 0.25), valid).item() == pytest.approx(0.75)


def test_occurrence_and_artist_spread():
    keys = torch.tensor([[3, 1, 3, -1, 3, 1, -1]])
    valid = torch.tensor([[True, True, True, True, False, True, True]])
    assert occurrence(keys, valid).tolist() == [[0, 0, 1, 0, 0, 1, 0]]
    distinct, most = artist_spread(torch.tensor([[0, 1, 2, 4, 9], [6, 8, 12, 12, 12]]), ARTIST, 5)
    assert distinct.tolist() == [3, 2] and most.tolist() == [3, 1]


def test_artist_cap_is_never_exceeded_and_fills_from_the_pool():
    # candidates in score order: artist 0 four times first, then the others
    candidates = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 6, 2, 7, 1, 0, 11, 10, 4, 5]])
    valid = torch.ones_like(candidates, dtype=torch.bool)
    for cap in (1, 2, 3):
        positions, ok = artist_cap(candidates, valid, ARTIST, 5, cap)
        picked = candidates.gather(1, positions).masked_fill(~ok, 12)  # 12: the empty-slot sentinel
        assert (artist_spread(picked, ARTIST, 5)[1] <= cap).all()
        # the first `cap` items of artist 0, then the next allowed ones in pool order
        assert picked[0].tolist() == {1: [0, 4, 6, 8, 9], 2: [0, 1, 4, 5, 6], 3: [0, 1, 2, 4, 5]}[cap]
        assert ok[0].all()
    # row 1 (artists 0 2 0 2 0 0 4 4 1 1): one song each of 4 artists, then two each
    positions, ok = artist_cap(candidates, valid, ARTIST, 5, 1)
    assert candidates[1, positions[1, :4]].tolist() == [3, 6, 11, 4] and ok[1].tolist() == [True] * 4 + [False]
    positions, ok = artist_cap(candidates, valid, ARTIST, 5, 2)
    assert candidates[1, positions[1]].tolist() == [3, 6, 2, 7, 11] and ok[1].all()
    # a pool without enough artists: the list is shorter, never over the cap
    positions, ok = artist_cap(torch.tensor([[0, 1, 2, 4, 5]]), torch.ones(1, 5, dtype=torch.bool), ARTIST, 4, 1)
    assert ok.tolist() == [[True, True, False, False]] and positions[0, :2].tolist() == [0, 3]
    # invalid candidates (known items) are never picked
    masked = valid.clone()
    masked[0, 4] = False
    positions, ok = artist_cap(candidates[:1], masked[:1], ARTIST, 5, 1)
    assert candidates[0, positions[0]].tolist() == [0, 5, 6, 8, 9]  # artist 1 is now item 5


def test_artist_cap_reaches_past_the_pool_when_it_runs_out():
    # 300 items, the 120 best all by artist 0: the cap fills from beyond the pool of 50 (then 200)
    artist = torch.cat([torch.zeros(120, dtype=torch.long), torch.arange(1, 181)])
    sim = ItemSimilarity(artist, torch.zeros(300, 1))
    scores = torch.linspace(1.0, 0.0, 300).repeat(3, 1)
    scores[1, 150:] = float("-inf")  # unseen items: 120 by artist 0 and 30 others
    scores[2, 120:] = float("-inf")  # unseen items: artist 0 only
    items, ok = rerank_scores(scores, 5, Diversify("artist-cap", max_per_artist=2), sim)
    assert items[0].tolist() == [0, 1, 120, 121, 122] and ok[0].all()
    assert items[1].tolist() == [0, 1, 120, 121, 122] and ok[1].all()
    assert items[2, :2].tolist() == [0, 1] and ok[2].tolist() == [True, True, False, False, False]
    # each row as if alone: the same
    for row in range(3):
        alone, alone_ok = rerank_scores(scores[row : row + 1], 5, Diversify("artist-cap", max_per_artist=2), sim)
        assert alone[0][alone_ok[0]].tolist() == items[row][ok[row]].tolist()


def test_mmr_with_lambda_zero_is_the_plain_order():
    generator = torch.Generator().manual_seed(0)
    candidates = torch.stack([torch.randperm(12, generator=generator) for _ in range(6)])
    scores = torch.sort(torch.randn(6, 12, generator=generator), dim=1, descending=True).values
    scores[1, 5] = scores[1, 4]  # a tie keeps pool order
    scores[2, 9:] = float("-inf")  # known items at the end of the pool
    positions, ok = mmr(candidates, scores, similarity(), 10, 0.0)
    assert ok[2].tolist() == [True] * 9 + [False] and ok[[0, 1, 3, 4, 5]].all()
    assert (
        positions.masked_fill(~ok, -1).tolist()
        == [list(range(10))] * 2 + [list(range(9)) + [-1]] + [list(range(10))] * 3
    )


def test_mmr_with_a_large_lambda_spreads_artists():
    # the four best candidates are by artist 0 (genre 0); the next are by other artists
    candidates = torch.tensor([[0, 1, 2, 3, 4, 6, 8, 10]])
    scores = torch.tensor([[1.0, 0.99, 0.98, 0.97, 0.5, 0.4, 0.3, 0.2]])
    plain = candidates.gather(1, mmr(candidates, scores, similarity(), 4, 0.0)[0])
    spread = candidates.gather(1, mmr(candidates, scores, similarity(), 4, 0.7)[0])
    assert artist_spread(plain, ARTIST, 4)[0].item() == 1
    assert spread[0].tolist() == [0, 6, 8, 10]  # every pick after the first avoids artist 0 and genre 0
    assert artist_spread(spread, ARTIST, 4)[0].item() == 4
    # a small lambda trades little: relevance 1.0 vs 0.5 outweighs 0.1 * similarity
    assert candidates.gather(1, mmr(candidates, scores, similarity(), 4, 0.1)[0])[0].tolist() == [0, 1, 2, 3]
    # the MMR objective of each pick: no remaining candidate beats it
    positions, _ = mmr(candidates, scores, similarity(), 4, 0.7)
    rel = (scores - scores.min()) / (scores.max() - scores.min())
    sim = similarity().pairwise(candidates, candidates)[0]
    for step in range(1, 4):
        chosen = positions[0, :step]
        objective = 0.3 * rel[0] - 0.7 * sim[:, chosen].max(1).values
        objective[chosen] = float("-inf")
        assert objective.argmax().item() == positions[0, step].item()


def test_batch_and_single_user_rerank_agree():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(7, 12, generator=generator)
    scores[3, :6] = float("-inf")  # a user with few unseen items
    for option in (Diversify(), Diversify("artist-cap", max_per_artist=1), Diversify("mmr", mmr_lambda=0.5)):
        batch, ok = rerank_scores(scores, 5, option, similarity())
        for user in range(7):
            single, single_ok = rerank_scores(scores[user : user + 1], 5, option, similarity())
            assert batch[user].tolist() == single[0].tolist() and ok[user].tolist() == single_ok[0].tolist()
        assert ok[3].sum() <= 6
    # MMR in small user chunks is the same as in one
    pool = scores.topk(12, dim=1)
    whole = rerank(pool.indices, pool.values, 5, Diversify("mmr", mmr_lambda=0.5), similarity())
    chunked = rerank(pool.indices, pool.values, 5, Diversify("mmr", mmr_lambda=0.5), similarity(), cells=12 * 3 * 2)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_options_and_clear_errors():
    assert pool_size(10) == 50 and pool_size(20) == 100 and Diversify().pool(10) == 10
    assert Diversify("artist-cap").describe(10) == {"method": "artist-cap", "max_per_artist": 2, "pool": 50}
    assert Diversify("mmr").describe()["lambda"] == 0.3
    with pytest.raises(ValueError, match="unknown re-ranker 'cap'"):
        Diversify("cap")
    with pytest.raises(ValueError, match="max_per_artist must be an integer >= 1"):
        Diversify("artist-cap", max_per_artist=0)
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\], got 1.5"):
        Diversify("mmr", mmr_lambda=1.5)
    no_artists = ItemSimilarity(torch.full((12,), -1), GENRES)
    scores = torch.randn(2, 12)
    with pytest.raises(ValueError, match="artist-cap needs each item's artist"):
        rerank_scores(scores, 3, Diversify("artist-cap"), no_artists)
    # genres alone: MMR still runs (genre-only similarity)
    items, ok = rerank_scores(scores, 3, Diversify("mmr", mmr_lambda=0.9), no_artists)
    assert ok.all() and items.shape == (2, 3)
    with pytest.raises(ValueError, match="neither"):
        rerank_scores(scores, 3, Diversify("mmr"), ItemSimilarity(torch.full((12,), -1), torch.zeros(12, 0)))


# ------------------------------------------------------------------------- serving index and CLI


@pytest.fixture(scope="module")
def bundle():
    from test_recommend import make_bundle

    return make_bundle()


def test_serving_rankings_rerank_the_blended_scores(bundle):
    plain = rank_songs(bundle, 30, user=3)
    capped = rank_songs(bundle, 6, user=3, diversify=Diversify("artist-cap", max_per_artist=1))
    artists = bundle.song_artist[capped.songs].tolist()
    assert len(set(artists)) == len(artists) == 6  # 6 artists in the toy catalogue, one song each
    order = plain.songs.tolist()
    assert [order.index(s) for s in capped.songs.tolist()] == sorted(order.index(s) for s in capped.songs.tolist())
    assert capped.diversify.method == "artist-cap"
    assert torch.allclose(capped.score, plain.score[[order.index(s) for s in capped.songs.tolist()]])
    same = rank_songs(bundle, 6, user=3, diversify=Diversify("mmr", mmr_lambda=0.0))
    assert same.songs.tolist() == order[:6]
    # batch inference with a re-ranker: each user's rows are their single-user re-ranked list
    option = Diversify("mmr", mmr_lambda=0.6)
    batch = rank_users(bundle, torch.arange(12), 5, diversify=option)
    frame = recommendation_frame(bundle, 5, batch_cells=3 * 30, diversify=option)
    for user in range(12):
        single = rank_songs(bundle, 5, user=user, diversify=option).songs.tolist()
        assert batch.row(user).songs.tolist() == single
        rows = frame.filter(frame["user_id"] == bundle.user_id(user)).sort("rank")
        assert rows["song_id"].to_list() == [bundle.song_id(s) for s in single]
    new_user = rank_songs(bundle, 4, songs=[1, 2], diversify=Diversify("artist-cap", max_per_artist=1))
    assert len(set(bundle.song_artist[new_user.songs].tolist())) == 4


def test_cli_recommend_diversify(bundle, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_serving_index", lambda config: bundle)
    base = ["recommend", "--model", "toy", "--user", "1003", "--k", "6", "--json"]
    assert cli.main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["diversify"] == {"method": "none"}
    assert plain["user_id"] == 1003 and plain["songs"] == []  # warehouse ids are integers, like every song_id
    assert all(isinstance(row["song_id"], int) for row in plain["recommendations"])
    assert (
        cli.main(["recommend", "--model", "toy", "--songs", f" {bundle.song_id(1)},{bundle.song_id(2)}", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["songs"] == [bundle.song_id(1), bundle.song_id(2)]
    assert cli.main(base + ["--diversify", "artist-cap", "--max-per-artist", "1"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["diversify"] == {"method": "artist-cap", "max_per_artist": 1, "pool": 50}
    artists = [row["artist"] for row in capped["recommendations"]]
    assert len(artists) == 6 and len(set(artists)) == 6
    expected = rank_songs(bundle, 6, user=3, diversify=Diversify("artist-cap", max_per_artist=1))
    assert [row["song_id"] for row in capped["recommendations"]] == [bundle.song_id(s) for s in expected.songs.tolist()]
    assert cli.main(base + ["--diversify", "mmr", "--mmr-lambda", "0"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert zero["diversify"]["method"] == "mmr" and zero["diversify"]["lambda"] == 0.0
    assert [r["song_id"] for r in zero["recommendations"]] == [r["song_id"] for r in plain["recommendations"]]
    assert cli.main(["recommend", "--model", "toy", "--user", "1003", "--k", "4", "--diversify", "mmr"]) == 0
    assert "re-ranked: MMR λ=0.3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--diversify", "cap"], r"argument --diversify: invalid choice: 'cap'"),
        (["--diversify", "mmr", "--mmr-lambda", "1.5"], r"argument --mmr-lambda: must be in \[0, 1\], got 1.5"),
        (["--diversify", "mmr", "--mmr-lambda", "x"], r"argument --mmr-lambda: must be a number in \[0, 1\], got 'x'"),
        (["--diversify", "artist-cap", "--max-per-artist", "0"], r"argument --max-per-artist: must be >= 1, got 0"),
        (["--max-per-artist", "2"], r"--max-per-artist applies to --diversify artist-cap, not --diversify none"),
        (["--diversify", "artist-cap", "--mmr-lambda", "0.2"], r"--mmr-lambda applies to --diversify mmr"),
    ],
)
def test_cli_rejects_bad_diversify_options(extra, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_serving_index", lambda config: pytest.fail("ranked despite a usage error"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["recommend", "--model", "toy", "--user", "1", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "spotify-engine recommend: error:" in err
    assert re.search(message, err), err


def test_batch_inference_config_takes_the_option():
    from spotify_engine_assets.defs.chain import RecommendationsConfig

    config = RecommendationsConfig()
    assert (config.diversify, config.max_per_artist, config.mmr_lambda) == ("none", 2, 0.3)
    assert RecommendationsConfig(diversify="artist-cap", max_per_artist=1).max_per_artist == 1
    with pytest.raises(Exception, match="mmr_lambda"):
        RecommendationsConfig(mmr_lambda=2.0)
