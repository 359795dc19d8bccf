"""Explanations from the model's own computation, on a hand-built random graph (no Dagster run):
evidence links come from the training graph only, attributions are the model's gradients on edge
masks (local to the pair's neighbourhood), attention values are the ones the model used, and
removing links really removes both directions."""

from __future__ import annotations

import pytest
import torch
from test_recommend import NUM, make_bundle

from spotify_engine_assets.core.serving.explain import (
    edge_attributions,
    evidence_links,
    explain,
    explain_many,
    faithfulness,
    link_attention,
    link_attributions,
    masked_edges,
    model_relations,
    pair_score,
    render_explanation,
    without_links,
)
from spotify_engine_assets.datasets.listening.graph import BY, HAS, LISTENS, REV_BY, REV_LISTENS, SCHEMA

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle():
    return make_bundle("gat_enhanced")


def _candidate(bundle, user):
    """The first song the user has no interaction with."""
    known = set(bundle.known_songs(user).tolist())
    return next(s for s in range(NUM["song"]) if s not in known)


def _masked_score(model, view, user, song, relation, edge, value):
    """The pair's score with one edge's messages scaled by ``value`` (every other mask 1)."""
    masks = {r: torch.ones(view[r].edge_index.size(1)) for r in sorted(model_relations(model))}
    masks[relation][edge] = value
    with masked_edges(model, view, masks), torch.no_grad():
        user_emb, song_emb = model(view)[:2]
    return float(user_emb[user] @ song_emb[song])


def test_evidence_links_use_training_edges_only(bundle):
    user = 0
    song = _candidate(bundle, user)
    links = evidence_links(bundle.view, user, song, SCHEMA)
    played = links.target[[i for i, k in enumerate(links.kind) if k == "played"]]
    assert sorted(played.tolist()) == sorted(bundle.training_songs(user).tolist())
    heldout = set(bundle.known_songs(user).tolist()) - set(bundle.training_songs(user).tolist())
    assert heldout and not heldout & set(played.tolist())  # validation / test songs never appear
    kinds = set(links.kind)
    assert {"played", "candidate_artist", "candidate_genre"} <= kinds
    artist = [i for i, k in enumerate(links.kind) if k == "candidate_artist"]
    assert links.source[artist].tolist() == [song] and links.target[artist].tolist() == [
        bundle.catalog.song_artist[song]
    ]
    for i, kind in enumerate(links.kind):
        if kind == "listener":
            assert int(links.target[i]) == song and int(links.source[i]) != user


def test_attributions_are_the_models_gradients_on_edge_masks(bundle):
    """The attribution of an edge is d score / d mask at mask = 1 (checked by finite differences),
    and a link's attribution sums its two directions."""
    user, song = 1, _candidate(bundle, 1)
    attribution = edge_attributions(bundle.model, bundle.view, user, song)
    assert attribution.score == pytest.approx(float(bundle.user_emb[user] @ bundle.song_emb[song]), rel=1e-5)
    links = evidence_links(bundle.view, user, song, SCHEMA, model_relations(bundle.model))
    values = link_attributions(attribution, links)
    played = next(i for i, k in enumerate(links.kind) if k == "played")
    edge = int(links.edge[played])
    for relation in (LISTENS, REV_LISTENS):
        eps = 1e-3
        finite = (
            attribution.score - _masked_score(bundle.model, bundle.view, user, song, relation, edge, 1 - eps)
        ) / eps
        assert attribution.gradients[relation][edge] == pytest.approx(finite, rel=1e-2, abs=1e-4)
    both = attribution.gradients[LISTENS][edge] + attribution.gradients[REV_LISTENS][edge]
    assert float(values[played]) == pytest.approx(float(both))
    assert values.abs().sum() > 0


def test_attention_is_what_the_model_used(bundle):
    user, song = 2, _candidate(bundle, 2)
    links = evidence_links(bundle.view, user, song, SCHEMA, model_relations(bundle.model))
    attribution = edge_attributions(bundle.model, bundle.view, user, song)
    attention = link_attention(attribution.attention, links, SCHEMA)
    bundle.model.eval()
    with torch.no_grad():
        _, _, reference = bundle.model(bundle.view, return_attention=True)
    first_played = next(i for i, k in enumerate(links.kind) if k == "played")
    edge = int(links.edge[first_played])
    # a user attends to their played song along rev_listens (song -> user), in every layer
    for layer, value in enumerate(attention[first_played]):
        index, alpha = reference[f"layer{layer}/{'__'.join(REV_LISTENS)}"]
        assert int(index[0, edge]) == int(links.target[first_played]) and int(index[1, edge]) == user
        assert value == pytest.approx(float(alpha[edge].mean()), abs=1e-6)
    artist = next(i for i, k in enumerate(links.kind) if k == "candidate_artist")
    assert attention[artist][0] == pytest.approx(1.0)  # one artist per song: softmax over one neighbour


def test_without_links_removes_both_directions(bundle):
    view = bundle.view
    removed = without_links(view, {LISTENS: torch.tensor([0, 3]), BY: torch.tensor([1])}, SCHEMA)
    assert removed[LISTENS].edge_index.size(1) == view[LISTENS].edge_index.size(1) - 2
    assert torch.equal(removed[REV_LISTENS].edge_index, removed[LISTENS].edge_index.flip(0))
    assert removed[LISTENS].edge_attr.size(0) == removed[LISTENS].edge_index.size(1)
    assert removed[REV_BY].edge_index.size(1) == view[BY].edge_index.size(1) - 1
    assert torch.equal(removed[HAS].edge_index, view[HAS].edge_index)
    kept = {tuple(p) for p in removed[LISTENS].edge_index.t().tolist()}
    assert tuple(view[LISTENS].edge_index[:, 0].tolist()) not in kept


def test_explanation_content_and_rendering(bundle):
    user = 3
    song = _candidate(bundle, user)
    e = explain(bundle, user, song, top=4)
    assert e["user_id"] == 1003 and e["song_id"] == bundle.song_id(song)
    assert e["score"] == pytest.approx(pair_score(bundle.model, bundle.view, user, song), rel=1e-5)
    assert 0 < len(e["evidence"]) <= 4
    attributions = [row["attribution"] for row in e["evidence"]]
    assert attributions == sorted(attributions, reverse=True)
    # genre influence = the user's training genre shares x the song's genre weights
    profile = bundle.genre_matrix[bundle.training_songs(user)].sum(0)
    profile = profile / profile.sum()
    assert e["genre_influence"]["total"] == pytest.approx(float(profile @ bundle.genre_matrix[song]), rel=1e-5)
    artist = bundle.catalog.song_artist[song]
    by_artist = sum(bundle.catalog.song_artist[s] == artist for s in bundle.training_songs(user).tolist())
    assert e["artist_influence"]["user_songs_by_artist"] == by_artist
    for similar in e["similar_users"]:
        listener = bundle.user_index(similar["user_id"])
        assert song in bundle.training_songs(listener).tolist()
    text = render_explanation(e)
    assert f"model score {e['score']:.4f}" in text and "Genre influence" in text
    assert render_explanation(e, markdown=True).startswith("### Why user 1003")


@pytest.mark.parametrize("model", ["gat_basic", "lightgcn", "most_popular"])
def test_other_models_explain(model):
    bundle = make_bundle(model)
    user = 5
    song = _candidate(bundle, user)
    e = explain(bundle, user, song)
    if model == "most_popular":
        assert e["score"] == float(bundle.popularity[song]) and e["evidence"] == []
        return
    assert e["score"] == pytest.approx(float(bundle.user_emb[user] @ bundle.song_emb[song]), rel=1e-4, abs=1e-6)
    kinds = {row["kind"] for row in e["evidence"]}
    assert "candidate_genre" not in kinds  # neither model passes messages over genre edges
    if model == "lightgcn":
        assert kinds <= {"played", "listener"}
        assert all(row["attention"] == [] for row in e["evidence"])  # LightGCN has no attention


def test_faithfulness_reports_both_arms_with_a_fixed_seed(bundle):
    pairs = [(u, _candidate(bundle, u)) for u in range(4)]
    first = faithfulness(bundle.model, bundle.view, pairs, remove=2, seed=3)
    second = faithfulness(bundle.model, bundle.view, pairs, remove=2, seed=3)
    assert first["pairs"] == 4 and first["mean_drop_random"] == second["mean_drop_random"]
    for row in first["rows"]:
        user, song = row["user"], row["song"]
        links = evidence_links(bundle.view, user, song, SCHEMA, model_relations(bundle.model))
        values = link_attributions(edge_attributions(bundle.model, bundle.view, user, song), links)
        top = torch.argsort(values, descending=True)[:2].tolist()
        removed = {}
        for i in top:
            removed.setdefault(links.relation[i], []).append(int(links.edge[i]))
        view = without_links(bundle.view, {r: torch.tensor(e) for r, e in removed.items()}, SCHEMA)
        assert row["drop_top"] == pytest.approx(row["score"] - pair_score(bundle.model, view, user, song), abs=1e-5)
    with pytest.raises(ValueError, match="evidence links"):
        faithfulness(bundle.model, bundle.view, pairs, remove=10_000)


def test_one_forward_pass_explains_several_songs_as_one_pass_each(bundle):
    """explain_many (recommend --explain, the explanations asset) shares the masked forward pass:
    the same scores, evidence and attributions as one explain() per song."""
    user = 1
    known = set(bundle.known_songs(user).tolist())
    songs = [s for s in range(NUM["song"]) if s not in known][:4]
    for song, shared in zip(songs, explain_many(bundle, user, songs)):
        alone = explain(bundle, user, song)
        assert shared["score"] == pytest.approx(alone["score"], abs=1e-6)
        assert [e["label"] for e in shared["evidence"]] == [e["label"] for e in alone["evidence"]]
        assert [e["attribution"] for e in shared["evidence"]] == pytest.approx(
            [e["attribution"] for e in alone["evidence"]], abs=1e-6
        )
        assert shared["similar_users"] == alone["similar_users"]
