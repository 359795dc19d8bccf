"""Explanations computed from what the model itself computed, never from the generator's truth.

For a (user, candidate song) pair, on the message-passing graph the model was trained on
(training listens edges only):

* **score**: the model's dot product of the user's and the song's embeddings.
* **evidence links**: the graph links on the paths from the user through the songs they played
  to the candidate, its artist and genres: the user's listens links (user-played song), the
  played songs' links to the candidate's artist and genres, and the candidate's own links (to
  its artist, its genres, its listeners). A link is an edge and its reverse.
* **attribution** of a link: gradient x input of the score with respect to a multiplicative
  mask on the link's messages (masks of ones: the sparse models' ``edge_masks``, PyG's explain
  hooks ``set_hetero_masks`` with sigmoid off for the others), summed over both directions and every
  layer: the first-order change of the score if the link's messages were switched off.
* **attention**: the attention coefficients the model used on each evidence link in the same
  forward pass (``model(view, return_attention=True)``, mean over heads), per layer, in the
  direction that carries the signal towards the user or the candidate.
* **genre influence**: the user's genre profile from training interactions x the song's genres;
  **artist influence**: the user's training songs by the candidate's artist; **similar users**:
  the candidate's listeners nearest to the user in the model's user embeddings.

:func:`faithfulness` checks the attribution: removing the top-attributed evidence links from the
graph (really removing them, so attention and normalisation are recomputed) must lower the score
more, on average, than removing as many random evidence links.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.explain.algorithm.utils import clear_masks, set_hetero_masks

from ..data.graph import Schema, add_reverse, reverse
from ..models.baselines import MostPopular
from .cold_start import genre_profile_of_songs
from .recommend import ModelBundle


@dataclass
class EvidenceLinks:
    """Evidence links of one pair: kind, forward relation, edge position in the view, endpoints."""

    kind: list[str]
    relation: list[tuple[str, str, str]]
    edge: Tensor
    source: Tensor  # forward source node (user for listens, song for by/has)
    target: Tensor  # forward target node (song, artist, genre)

    def __len__(self) -> int:
        return int(self.edge.numel())


def model_relations(model) -> set[tuple[str, str, str]]:
    """Relations the model passes messages along (forward and reverse; none for most-popular)."""
    return set(getattr(model, "relations", ()))


def evidence_links(
    view: HeteroData, user: int, song: int, schema: Schema, relations: set | None = None
) -> EvidenceLinks:
    """The links on the paths user -> played songs -> (candidate's artist / genres) -> candidate,
    and the candidate's own links, restricted to ``relations`` the model uses."""
    LISTENS, BY, HAS = schema.interaction, schema.category("artist"), schema.category("genre")
    listens, by, has = view[LISTENS].edge_index, view[BY].edge_index, view[HAS].edge_index
    played_edges = (listens[0] == user).nonzero().flatten()
    played = listens[1, played_edges]
    artists = by[1, by[0] == song]
    genres = has[1, has[0] == song]
    parts = [
        ("played", LISTENS, played_edges),
        ("played_artist", BY, (torch.isin(by[0], played) & torch.isin(by[1], artists)).nonzero().flatten()),
        ("played_genre", HAS, (torch.isin(has[0], played) & torch.isin(has[1], genres)).nonzero().flatten()),
        ("candidate_artist", BY, (by[0] == song).nonzero().flatten()),
        ("candidate_genre", HAS, (has[0] == song).nonzero().flatten()),
        ("listener", LISTENS, ((listens[1] == song) & (listens[0] != user)).nonzero().flatten()),
    ]
    stores = {LISTENS: listens, BY: by, HAS: has}
    parts = [(kind, relation, index) for kind, relation, index in parts if relations is None or relation in relations]
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return EvidenceLinks([], [], empty, empty, empty)
    ends = torch.cat([stores[relation][:, index] for _, relation, index in parts], 1)
    kinds = [kind for kind, _, index in parts for _ in range(index.numel())]
    rels = [relation for _, relation, index in parts for _ in range(index.numel())]
    return EvidenceLinks(kinds, rels, torch.cat([index for _, _, index in parts]), ends[0], ends[1])


def _reset_caches(model) -> None:
    if hasattr(model, "reset_cache"):
        model.reset_cache()


@contextmanager
def masked_edges(model: nn.Module, view: HeteroData, masks: dict[tuple[str, str, str], Tensor]) -> Iterator[None]:
    """Within the block, every message along relation ``r`` is multiplied by ``masks[r]`` (one
    value per edge): models that aggregate with sparse products read ``model.edge_masks``, the
    others get PyG's explain hooks (sigmoid off)."""
    if model.reads_edge_masks:
        model.edge_masks = masks
    else:
        set_hetero_masks(model, masks, {r: view[r].edge_index for r in masks}, apply_sigmoid=False)
    try:
        yield
    finally:
        clear_masks(model)
        model.edge_masks = None


def pair_score(model, view: HeteroData, user: int, song: int) -> float:
    """The model's score of one pair computed on ``view`` (evaluation mode)."""
    if isinstance(model, MostPopular):
        return float(torch.bincount(view[model.schema.interaction].edge_index[1], minlength=model.num_items)[song])
    _reset_caches(model)
    model.eval()
    with torch.no_grad():
        user_emb, song_emb = model.encode(view)[:2]
    return float(user_emb[user] @ song_emb[song])


@dataclass
class Attribution:
    score: float
    gradients: dict[tuple[str, str, str], Tensor]  # d score / d mask per edge, per relation
    attention: dict[str, tuple[Tensor, Tensor]]  # the model's attention in the same pass
    user_emb: Tensor
    song_emb: Tensor


def edge_attributions(model: nn.Module, view: HeteroData, user: int, song: int) -> Attribution:
    """Gradient x input of the pair's score w.r.t. a mask of ones on every edge's messages.

    The mask multiplies each message after the attention coefficients are applied (PyG's
    explain hook), so the attribution of an edge is the first-order score change when its
    message is switched off, summed over every layer that uses it.
    """
    return pair_attributions(model, view, [(user, song)])[0]


def pair_attributions(model: nn.Module, view: HeteroData, pairs: Sequence[tuple[int, int]]) -> list[Attribution]:
    """:func:`edge_attributions` of every ``(user, song)`` pair from one masked forward pass (one
    backward pass per pair): the pairs share the embeddings and the attention of that pass. The
    model's cached graph structures (keyed by the view's tensors) are reused, not rebuilt."""
    relations = sorted(model_relations(model))
    masks = {relation: torch.ones(view[relation].edge_index.size(1), requires_grad=True) for relation in relations}
    model.eval()
    results = []
    with masked_edges(model, view, masks), torch.enable_grad():
        user_emb, song_emb, attention = model.encode(view, return_attention=True)
        attention = {key: (index, alpha.detach()) for key, (index, alpha) in (attention or {}).items()}
        for position, (user, song) in enumerate(pairs):
            score = user_emb[user] @ song_emb[song]
            gradients = torch.autograd.grad(
                score, [masks[r] for r in relations], allow_unused=True, retain_graph=position < len(pairs) - 1
            )
            grads = {r: (g if g is not None else torch.zeros_like(masks[r])) for r, g in zip(relations, gradients)}
            results.append(Attribution(float(score.detach()), grads, attention, user_emb.detach(), song_emb.detach()))
    return results


def link_attributions(attribution: Attribution, links: EvidenceLinks) -> Tensor:
    """Attribution of every link: the forward and the reverse edge's gradient x input (mask = 1)."""
    values = torch.zeros(len(links))
    for i, (relation, edge) in enumerate(zip(links.relation, links.edge.tolist())):
        for direction in (relation, reverse(relation)):
            if direction in attribution.gradients:
                values[i] += attribution.gradients[direction][edge]
    return values


def link_attention(
    attention: dict[str, tuple[Tensor, Tensor]], links: EvidenceLinks, schema: Schema
) -> list[list[float | None]]:
    """Per link, the attention coefficient (mean over heads) in its evidence direction, per layer."""
    layers = sorted({key.split("/")[0] for key in attention}, key=lambda name: int(name.removeprefix("layer")))
    columns = []
    # the direction carrying the evidence towards the user or the candidate: the reverse relation
    # (user <- played song <- artist/genre, candidate <- artist/genre), except a listener's own edge
    directions = [
        relation if kind == "listener" else reverse(relation) for kind, relation in zip(links.kind, links.relation)
    ]
    for layer in layers:
        column: list[float | None] = [None] * len(links)
        for direction in set(directions):
            entry = attention.get(f"{layer}/{'__'.join(direction)}")
            if entry is None:
                continue
            rows = [i for i, d in enumerate(directions) if d == direction]
            alpha = entry[1][links.edge[rows]]
            for i, value in zip(rows, (alpha.mean(-1) if alpha.dim() > 1 else alpha).tolist()):
                column[i] = value
        columns.append(column)
    return [[column[i] for column in columns] for i in range(len(links))]


def without_links(view: HeteroData, removed: dict[tuple[str, str, str], Tensor], schema: Schema) -> HeteroData:
    """A copy of ``view`` with the given forward edges and their reverses removed."""
    out = HeteroData()
    for node_type in view.node_types:
        out[node_type].num_nodes = view[node_type].num_nodes
        out[node_type].node_id = view[node_type].node_id
    forward = (schema.interaction, *schema.categories.values())
    for relation in forward:
        store = view[relation]
        keep = torch.ones(store.edge_index.size(1), dtype=torch.bool)
        if relation in removed and removed[relation].numel():
            keep[removed[relation]] = False
        out[relation].edge_index = store.edge_index[:, keep]
        if "edge_attr" in store:
            out[relation].edge_attr = store.edge_attr[keep]
    return add_reverse(out, forward, attributes=("edge_attr",))


def view_without(view: HeteroData, links: EvidenceLinks, chosen: Tensor, schema: Schema) -> HeteroData:
    """:func:`without_links` of the ``chosen`` evidence links (positions into ``links``)."""
    removed: dict = {}
    for i in chosen.tolist():
        removed.setdefault(links.relation[i], []).append(int(links.edge[i]))
    return without_links(view, {relation: torch.tensor(edges) for relation, edges in removed.items()}, schema)


# ------------------------------------------------------------------------------------ explain


def _label(bundle: ModelBundle, kind: str, source: int, target: int) -> str:
    catalog = bundle.catalog
    if kind == "played":
        return f'played "{catalog.song_title[target]}" (song {bundle.song_id(target)})'
    if kind == "played_artist":
        return f'"{catalog.song_title[source]}" is by {catalog.artist_name[target]}'
    if kind == "played_genre":
        return f'"{catalog.song_title[source]}" has genre {catalog.genre_name[target]}'
    if kind == "candidate_artist":
        return f"artist {catalog.artist_name[target]}"
    if kind == "candidate_genre":
        return f"genre {catalog.genre_name[target]}"
    return f"listener user {bundle.user_id(source)}"


def explain_many(bundle: ModelBundle, user: int, songs: Sequence[int], top: int = 8) -> list[dict]:
    """:func:`explain` of several songs for one user, their attributions from one masked forward pass."""
    if isinstance(bundle.model, MostPopular):
        return [explain(bundle, user, song, top) for song in songs]
    attributions = pair_attributions(bundle.model, bundle.view, [(user, song) for song in songs])
    return [explain(bundle, user, song, top, attribution) for song, attribution in zip(songs, attributions)]


def explain(bundle: ModelBundle, user: int, song: int, top: int = 8, attribution: Attribution | None = None) -> dict:
    """A plain-dict explanation of the model's score for (user, song); indices are node indices
    (``attribution``: the pair's, when computed already, see :func:`explain_many`)."""
    model, view, catalog = bundle.model, bundle.view, bundle.catalog
    training = bundle.training_songs(user)
    artist = catalog.song_artist[song]
    song_genres = bundle.genre_matrix[song].nonzero().flatten()
    result: dict = {
        "config": bundle.config.name,
        "model": bundle.config.model,
        "user_id": bundle.user_id(user),
        "song_id": bundle.song_id(song),
        "title": catalog.song_title[song],
        "artist": catalog.artist_name[artist] if artist >= 0 else "-",
        "genres": [catalog.genre_name[g] for g in song_genres.tolist()],
        "already_played": bool((bundle.known_songs(user) == song).any()),
        "training_interactions": int(training.numel()),
    }
    # genre influence: the user's training genre profile x the song's genre weights
    profile = genre_profile_of_songs(bundle.genre_matrix, training)
    weights = bundle.genre_matrix[song]
    result["genre_influence"] = {
        "total": float(profile @ weights),
        "genres": [
            {
                "genre": catalog.genre_name[g],
                "user_share": float(profile[g]),
                "song_weight": float(weights[g]),
                "product": float(profile[g] * weights[g]),
            }
            for g in song_genres.tolist()
        ],
    }
    same_artist = [s for s in training.tolist() if catalog.song_artist[s] == artist]
    result["artist_influence"] = {
        "artist": result["artist"],
        "user_songs_by_artist": len(same_artist),
        "share_of_user_songs": len(same_artist) / max(int(training.numel()), 1),
        "examples": [catalog.song_title[s] for s in same_artist[:3]],
    }

    if isinstance(model, MostPopular):
        result.update(
            score=float(bundle.popularity[song]),
            attribution_method="none (popularity has no graph computation)",
            evidence=[],
            paths=[],
            similar_users=[],
        )
        return result

    attribution = attribution or edge_attributions(model, view, user, song)
    result["score"] = attribution.score
    result["attribution_method"] = "gradient x input on edge-message masks (PyG explain hooks)"
    links = evidence_links(view, user, song, bundle.schema, model_relations(model))
    values = link_attributions(attribution, links)
    attention = link_attention(attribution.attention, links, bundle.schema)
    order = torch.argsort(values, descending=True).tolist()
    result["evidence_links"] = len(links)
    result["evidence_attribution_total"] = float(values.sum())
    result["evidence"] = [
        {
            "kind": links.kind[i],
            "label": _label(bundle, links.kind[i], int(links.source[i]), int(links.target[i])),
            "attribution": float(values[i]),
            "attention": attention[i],
        }
        for i in order[:top]
    ]
    # attention along paths user <- played song <- (artist | genre) -> candidate
    result["paths"] = _paths(bundle, links, attention, values)[:top]
    # similar users who played it: candidate listeners by cosine similarity of the model's user embeddings
    listeners = [i for i, kind in enumerate(links.kind) if kind == "listener"]
    sources = links.source[listeners]
    user_emb = attribution.user_emb
    similarity = torch.nn.functional.cosine_similarity(user_emb[sources], user_emb[user].unsqueeze(0))
    result["similar_users"] = [
        {
            "user_id": bundle.user_id(int(sources[b])),
            "similarity": float(similarity[b]),
            "attribution": float(values[listeners[b]]),
        }
        for b in torch.argsort(similarity, descending=True)[:5].tolist()
    ]
    return result


def _paths(bundle: ModelBundle, links: EvidenceLinks, attention: list, values: Tensor) -> list[dict]:
    """Paths user <- played song <- artist/genre -> candidate with the attention on each hop."""
    played = {int(links.target[i]): i for i, k in enumerate(links.kind) if k == "played"}
    candidate_hop = {
        (k, int(links.target[i])): i for i, k in enumerate(links.kind) if k in ("candidate_artist", "candidate_genre")
    }
    paths = []
    for i, kind in enumerate(links.kind):
        if kind not in ("played_artist", "played_genre"):
            continue
        song, via = int(links.source[i]), int(links.target[i])
        first, last = played.get(song), candidate_hop.get(("candidate_" + kind.split("_")[1], via))
        if first is None or last is None:
            continue
        hops = [attention[first], attention[i], attention[last]]
        # attention flow: the last-layer coefficient into the user, earlier ones into songs
        flow = 1.0
        for hop in hops:
            known = [value for value in hop if value is not None]
            flow *= sum(known) / len(known) if known else 1.0
        name = bundle.catalog.artist_name[via] if kind == "played_artist" else bundle.catalog.genre_name[via]
        paths.append(
            {
                "played": bundle.catalog.song_title[song],
                "via": f"{'artist' if kind == 'played_artist' else 'genre'} {name}",
                "attention_user<-played": hops[0],
                "attention_played<-via": hops[1],
                "attention_candidate<-via": hops[2],
                "attention_flow": flow,
                "attribution": float(values[first] + values[i] + values[last]),
            }
        )
    return sorted(paths, key=lambda p: -p["attention_flow"])


# ------------------------------------------------------------------------------- faithfulness


def faithfulness(
    model: nn.Module,
    view: HeteroData,
    pairs: Sequence[tuple[int, int]],
    remove: int = 5,
    random_draws: int = 3,
    seed: int = 0,
) -> dict:
    """Score drop when removing the ``remove`` top-attributed evidence links vs as many random
    evidence links (mean of ``random_draws`` seeded draws) and vs the highest-attention links.

    Pairs with no more than ``remove`` evidence links are skipped. Returns the mean drops, the
    share of pairs where the top-attributed removal drops more than the random one, and one row
    per pair.
    """
    generator = torch.Generator().manual_seed(seed)
    relations, schema = model_relations(model), model.schema
    rows = []
    for (user, song), attribution in zip(pairs, pair_attributions(model, view, list(pairs))):
        links = evidence_links(view, user, song, schema, relations)
        if len(links) <= remove:
            continue
        values = link_attributions(attribution, links)
        base = attribution.score  # same model, same graph, evaluation mode
        top = torch.argsort(values, descending=True)[:remove]
        drop_top = base - pair_score(model, view_without(view, links, top, schema), user, song)
        random_drops = []
        for _ in range(random_draws):
            chosen = torch.randperm(len(links), generator=generator)[:remove]
            random_drops.append(base - pair_score(model, view_without(view, links, chosen, schema), user, song))
        row = {
            "user": user,
            "song": song,
            "score": base,
            "links": len(links),
            "drop_top": drop_top,
            "drop_random": sum(random_drops) / len(random_drops),
        }
        if attribution.attention:
            strength = torch.tensor(
                [
                    max((v for v in hop if v is not None), default=0.0)
                    for hop in link_attention(attribution.attention, links, schema)
                ]
            )
            by_attention = torch.argsort(strength, descending=True)[:remove]
            row["drop_attention"] = base - pair_score(
                model, view_without(view, links, by_attention, schema), user, song
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"no pair has more than {remove} evidence links")
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    summary = {
        "pairs": len(rows),
        "removed_links": remove,
        "random_draws": random_draws,
        "seed": seed,
        "mean_drop_top": mean("drop_top"),
        "mean_drop_random": mean("drop_random"),
        "top_beats_random_share": sum(r["drop_top"] > r["drop_random"] for r in rows) / len(rows),
        "rows": rows,
    }
    if all("drop_attention" in r for r in rows):
        summary["mean_drop_attention"] = mean("drop_attention")
    return summary


# ---------------------------------------------------------------------------------- rendering


def render_explanation(explanation: dict, markdown: bool = False) -> str:
    """A readable explanation: score, evidence, paths, genre and artist influence, similar users."""
    from .recommend import text_table

    e = explanation
    title = (
        f'Why user {e["user_id"]} may like "{e["title"]}" (song {e["song_id"]}) by {e["artist"]} '
        f"[{', '.join(e['genres']) or 'no genre'}] - model {e['config']}"
    )
    heading = (lambda text: f"\n#### {text}\n") if markdown else (lambda text: f"\n{text}\n")
    lines = [f"### {title}" if markdown else title, ""]
    lines.append(
        f"model score {e['score']:.4f}" + (" (the user already played this song)" if e["already_played"] else "")
    )
    lines.append(f"attribution: {e['attribution_method']}")
    if e.get("evidence"):
        lines.append(
            f"{e['evidence_links']} evidence links on the paths between the user and the song, "
            f"attributions summing to {e['evidence_attribution_total']:.4f}"
        )
        lines.append(
            heading(
                "Top contributing evidence (attribution: first-order score drop without the link; "
                "attention: the model's coefficient on the link, per layer)"
            )
        )
        lines.append(text_table(e["evidence"], ["kind", "label", "attribution", "attention"], markdown=markdown))
    if e.get("paths"):
        lines.append(
            heading(
                "Paths user <- played song <- artist/genre -> song (attention per hop, per layer; flow = product "
                "of the hops' mean attention; attribution = sum over the path's links)"
            )
        )
        rows = [
            {
                **p,
                "user<-played": p["attention_user<-played"],
                "played<-via": p["attention_played<-via"],
                "song<-via": p["attention_candidate<-via"],
            }
            for p in e["paths"]
        ]
        lines.append(
            text_table(
                rows,
                ["played", "via", "user<-played", "played<-via", "song<-via", "attention_flow", "attribution"],
                markdown=markdown,
            )
        )
    genre = e["genre_influence"]
    lines.append(
        heading(
            f"Genre influence {genre['total']:.4f} (the user's genre share from training songs x the song's genre weight)"
        )
    )
    lines.append(
        text_table(genre["genres"], ["genre", "user_share", "song_weight", "product"], markdown=markdown)
        if genre["genres"]
        else "the song has no genre"
    )
    artist = e["artist_influence"]
    lines.append(heading("Artist influence"))
    examples = f": {', '.join(artist['examples'])}" if artist["examples"] else ""
    lines.append(
        f"{artist['user_songs_by_artist']} of the user's {e['training_interactions']} training songs are by "
        f"{artist['artist']} ({artist['share_of_user_songs']:.0%}){examples}"
    )
    if e.get("similar_users"):
        lines.append(heading("Similar users who played it (cosine similarity of the model's user embeddings)"))
        lines.append(text_table(e["similar_users"], ["user_id", "similarity", "attribution"], markdown=markdown))
    return "\n".join(lines)
