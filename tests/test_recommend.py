"""Recommendation serving on a hand-built random graph (no Dagster run): id maps and clear
errors, masking every known song, the adaptive genre weight, new users by songs or genres."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData

from spotify_engine_assets.core.config import parse_config
from spotify_engine_assets.core.data.graph import num_nodes_of
from spotify_engine_assets.core.models import build_model, embed
from spotify_engine_assets.core.models.baselines import MostPopular
from spotify_engine_assets.core.serving.recommend import (
    Catalog,
    ModelBundle,
    UnknownIdError,
    rank_songs,
    ranking_rows,
    render_ranking,
    text_table,
)
from spotify_engine_assets.datasets.listening.graph import (
    BY,
    HAS,
    LISTENS,
    SCHEMA,
    add_reverse_edges,
    message_passing_graph,
)

torch.set_num_threads(1)

NUM = {"user": 12, "song": 30, "artist": 6, "genre": 4}


def random_graph(seed: int = 0) -> tuple[HeteroData, torch.Tensor]:
    """Users play 5..9 songs each; songs have one artist and one or two genres; warehouse ids are
    offset (users 1000+, songs 5000+, genres 70+) so index and id never coincide."""
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    offsets = {"user": 1000, "song": 5000, "artist": 300, "genre": 70}
    for node_type, count in NUM.items():
        data[node_type].num_nodes = count
        data[node_type].node_id = torch.arange(count) + offsets[node_type]
    pairs = []
    for user in range(NUM["user"]):
        songs = torch.randperm(NUM["song"], generator=g)[: 5 + user % 5]
        pairs += [(user, int(s)) for s in songs.sort().values]
    edge_index = torch.tensor(pairs).t().contiguous()
    data[LISTENS].edge_index = edge_index
    data[LISTENS].edge_attr = torch.rand(edge_index.size(1), 3, generator=g)
    data[LISTENS].first_played = torch.rand(edge_index.size(1), generator=g).double() * 1e6
    data[BY].edge_index = torch.stack([torch.arange(NUM["song"]), torch.arange(NUM["song"]) % NUM["artist"]])
    genre_pairs = [(s, s % NUM["genre"]) for s in range(NUM["song"])] + [
        (s, (s + 1) % NUM["genre"]) for s in range(0, NUM["song"], 3)
    ]
    data[HAS].edge_index = torch.tensor(genre_pairs).t().contiguous()
    add_reverse_edges(data)
    # every 4th interaction is held out of training (validation / test)
    train = torch.tensor([i for i in range(edge_index.size(1)) if i % 4])
    return data, train


def make_bundle(model: str = "gat_enhanced", seed: int = 0) -> ModelBundle:
    data, train = random_graph(seed)
    settings = {"name": f"toy_{model}", "model": model}
    if model != "most_popular":  # a field a kind does not use is refused (most_popular: no layers, lightgcn: no heads)
        settings.update(embedding_dim=8, num_layers=2)
    if model.startswith("gat_"):
        settings.update(heads=2 if model == "gat_enhanced" else 1)
    config = parse_config(settings)
    view = message_passing_graph(data, train)
    if config.trainable:
        net = build_model(config, SCHEMA, num_nodes_of(data))
        net.eval()
    else:
        net = MostPopular(config, SCHEMA, num_nodes_of(data))
        net.fit(view)
    embed(net, view)  # prepared on the view: its factors are the serving embeddings
    held = torch.tensor([i for i in range(data[LISTENS].edge_index.size(1)) if i % 4 == 0])
    return ModelBundle.of(
        config,
        net,
        SCHEMA,
        data,
        view,
        catalog=Catalog.from_graph(data, SCHEMA),
        valid_pairs=data[LISTENS].edge_index[:, held],
    )


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return make_bundle()


def test_id_maps_and_clear_errors(bundle):
    assert bundle.user_index(1003) == 3 and bundle.song_id(bundle.song_index(5007)) == 5007
    with pytest.raises(UnknownIdError, match=r"unknown user 3; 12 users exist \(ids 1000\.\.1011\): 1000, 1001"):
        bundle.user_index(3)
    with pytest.raises(UnknownIdError, match=r"unknown song 'abc'; 30 songs exist.*\(30 in all\)"):
        bundle.song_index("abc")
    assert bundle.genre_index("genre 71") == 1 and bundle.genre_index(72) == 2
    with pytest.raises(UnknownIdError, match=r"unknown genre 'polka'; 4 genres exist: 70 \(genre 70\), 71"):
        bundle.genre_index("polka")


def test_recommendations_never_contain_a_known_song(bundle):
    listens = bundle.data[LISTENS].edge_index
    for user in range(NUM["user"]):
        known = set(listens[1, listens[0] == user].tolist())
        ranking = rank_songs(bundle, NUM["song"], user=user)
        songs = ranking.songs.tolist()
        assert not known & set(songs)  # held-out (valid/test) songs are excluded too
        assert len(songs) == NUM["song"] - len(known)
        assert ranking.score.tolist() == sorted(ranking.score.tolist(), reverse=True)


def test_genre_prior_zero_ranks_by_the_model_alone(bundle):
    user = 4
    ranking = rank_songs(bundle, 5, user=user, genre_prior=0.0)
    scores = bundle.song_emb @ bundle.user_emb[user]
    scores[bundle.known_songs(user)] = float("-inf")
    assert ranking.genre_weight == 0.0
    assert ranking.songs.tolist() == scores.topk(5).indices.tolist()
    assert torch.allclose(ranking.model_score, scores.topk(5).values)


def test_adaptive_weight_follows_the_users_training_count(bundle):
    user = 7
    n = bundle.training_songs(user).numel()
    ranking = rank_songs(bundle, 5, user=user, genre_prior=5.0)
    assert ranking.interactions == n and ranking.genre_weight == pytest.approx(5.0 / (5.0 + n))


def test_new_user_by_genres_gets_songs_of_those_genres(bundle):
    genre = bundle.genre_index(72)
    ranking = rank_songs(bundle, 5, genres=[genre])
    assert ranking.genre_weight == 1.0 and ranking.interactions == 0
    assert all(bundle.genre_matrix[song, genre] > 0 for song in ranking.songs.tolist())
    assert torch.isnan(ranking.model_score).all()  # no model score without songs: genres only


def test_new_user_by_songs_excludes_them_and_uses_the_fold_in(bundle):
    songs = [bundle.song_index(5001), bundle.song_index(5002)]
    ranking = rank_songs(bundle, 8, songs=songs, genre_prior=0.0)
    assert not set(songs) & set(ranking.songs.tolist())
    expected = bundle.song_emb @ bundle.song_emb[songs].mean(0)
    assert torch.allclose(ranking.model_score, expected[ranking.songs])
    with pytest.raises(ValueError, match="give a user"):
        rank_songs(bundle, 3)


def test_rows_and_tables_show_warehouse_ids_and_names(bundle):
    ranking = rank_songs(bundle, 3, user=2)
    rows = ranking_rows(bundle, ranking)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["song_id"] >= 5000 and r["title"] == f"song {r['song_id']}" for r in rows)
    text = render_ranking(bundle, ranking, "user 1002")
    assert "top 3 for user 1002" in text and "title" in text.splitlines()[2]
    assert text_table([{"a": 1.5, "b": "x|y"}], ["a", "b"], markdown=True).splitlines()[-1] == "| 1.5000 | x\\|y |"


def test_most_popular_bundle_ranks_by_popularity():
    bundle = make_bundle("most_popular")
    ranking = rank_songs(bundle, 3, user=0, genre_prior=0.0)
    assert torch.equal(ranking.model_score, bundle.popularity[ranking.songs])


def test_genre_prior_is_chosen_on_validation(bundle):
    from spotify_engine_assets.core.serving.cold_start import GENRE_PRIOR_GRID

    n0, scores = bundle.n0, bundle.n0_scores
    assert bundle.n0_source == "validation"
    assert set(scores) == set(GENRE_PRIOR_GRID) and n0 in scores
    assert scores[n0] == max(scores.values()) and all(scores[g] < scores[n0] for g in scores if g < n0)
    assert rank_songs(bundle, 3, user=1).genre_prior == n0
    assert rank_songs(bundle, 3, user=1, genre_prior=2.0).genre_prior == 2.0


def test_serving_index_round_trip_ranks_like_the_bundle(bundle, monkeypatch):
    """The payload trained_model stores: loaded back (weights_only), it ranks every user exactly as
    the bundle does, with the stored n0 and no search."""
    import io

    from spotify_engine_assets.core.serving import cold_start
    from spotify_engine_assets.core.serving.recommend import ServingIndex, rank_users, recommendation_frame

    buffer = io.BytesIO()
    torch.save(bundle.to_payload(), buffer)
    buffer.seek(0)
    monkeypatch.setattr(cold_start, "tune_genre_prior", lambda *a, **k: pytest.fail("n0 searched while serving"))
    index = ServingIndex.from_payload(torch.load(buffer, weights_only=True), bundle.config)
    assert index.n0 == bundle.n0 and index.n0_scores == bundle.n0_scores
    for user in range(NUM["user"]):
        served, reference = rank_songs(index, 7, user=user), rank_songs(bundle, 7, user=user)
        assert served.songs.tolist() == reference.songs.tolist() and torch.allclose(served.score, reference.score)
    new = rank_songs(index, 5, songs=[3, 4], genres=[1]), rank_songs(bundle, 5, songs=[3, 4], genres=[1])
    assert new[0].songs.tolist() == new[1].songs.tolist()
    # batched ranking of every user (the recommendations asset) is the same ranking
    batch = rank_users(index, torch.arange(NUM["user"]), NUM["song"])
    for user in range(NUM["user"]):
        assert batch.row(user).songs.tolist() == rank_songs(index, NUM["song"], user=user).songs.tolist()
    frame = recommendation_frame(index, 4, batch_cells=3 * NUM["song"])  # several batches
    assert frame.columns == ["user_id", "rank", "song_id", "score", "model_score", "genre_score", "genre_weight"]
    assert frame.height == 4 * NUM["user"] and frame["user_id"].n_unique() == NUM["user"]
    first = frame.filter(frame["user_id"] == 1002)
    assert first["song_id"].to_list() == [index.song_id(s) for s in rank_songs(index, 4, user=2).songs.tolist()]


def test_bundle_of_an_artifact_without_a_stored_n0_uses_the_default_without_search(monkeypatch):
    """A trained_model artifact from before serving indices: the model and graph serve, n0 is the
    default (said in ``n0_source``), never searched; one with an index serves its stored n0."""
    from spotify_engine_assets.core.data.graph import to_payload
    from spotify_engine_assets.core.serving import cold_start
    from spotify_engine_assets.core.serving.recommend import DEFAULT_GENRE_PRIOR, bundle_from
    from spotify_engine_assets.datasets.listening import DATASET

    data, train = random_graph()
    held = torch.tensor([i for i in range(data[LISTENS].edge_index.size(1)) if i % 4 == 0])
    split = {"random": {"train": train, "valid": held[::2], "test": held[1::2]}}
    config = parse_config(
        {"name": "toy", "model": "gat_enhanced", "split": "random", "embedding_dim": 8, "num_layers": 2, "heads": 2}
    )
    artifact = {"config": config.model_dump(), "state": build_model(config, SCHEMA, num_nodes_of(data)).state_dict()}
    monkeypatch.setattr(cold_start, "tune_genre_prior", lambda *a, **k: pytest.fail("n0 searched while serving"))
    old = bundle_from(DATASET, artifact, to_payload(data), split)
    assert old.n0 == DEFAULT_GENRE_PRIOR and old.n0_source.startswith("default: the artifact was materialized before")
    assert rank_songs(old, 3, user=0).genre_prior == DEFAULT_GENRE_PRIOR
    stored = {**old.to_payload(), "genre_prior": 20.0, "genre_prior_source": "validation"}
    assert bundle_from(DATASET, {**artifact, "serving": stored}, to_payload(data), split).n0 == 20.0


def test_load_bundle_knows_configs_promoted_into_the_lake(tmp_path):
    from spotify_engine_assets.core.registry import PromotionSource
    from spotify_engine_assets.core.serving.recommend import load_bundle
    from spotify_engine_assets.datasets.listening import DATASET

    source = PromotionSource(
        family="lightgcn",
        study_name="s",
        trial=3,
        objective="valid_recall@10",
        value=0.1,
        storage="sqlite:///x.db",
        promoted_at="2026-11-22T00:00:00+00:00",
    )
    DATASET.registry.write_promoted(parse_config({"name": "hpo_lightgcn", "model": "lightgcn"}), source, tmp_path)
    # a promoted config is a known config: the error is that it is not trained yet, not that it is unknown
    with pytest.raises(UnknownIdError, match="'hpo_lightgcn' has no materialized listening/trained_model"):
        load_bundle(tmp_path, DATASET, "hpo_lightgcn")
    with pytest.raises(UnknownIdError, match="unknown listening model config 'hpo_nothing'.*hpo_lightgcn"):
        load_bundle(tmp_path, DATASET, "hpo_nothing")
