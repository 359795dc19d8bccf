"""Layer 1: the definitions load, and the asset graph has exactly the expected shape."""

import dagster as dg

from spotify_engine_assets.core.presentation import GROUP_NAME_LIMIT, group_name
from spotify_engine_assets.definitions import defs

EXPECTED_ASSET_KEYS = [
    "ground_truth/user_genre_affinity",
    "kaggle/source_files",
    "kaggle_raw/artist_genres",
    "kaggle_raw/entries",
    "kaggle_raw/landed_entries",
    "kaggle_raw/landed_rejects",
    "kaggle_raw/rejects",
    "kaggle_raw/track_features",
    "lastfm/ab_tests",
    "lastfm/artists",
    "lastfm/champion",
    "lastfm/experiments",
    "lastfm/friendships",
    "lastfm/graph",
    "lastfm/hpo_study",
    "lastfm/listens",
    "lastfm/metric_report",
    "lastfm/model_comparison",
    "lastfm/model_registry",
    "lastfm/recommendations",
    "lastfm/split",
    "lastfm/split_pairs",
    "lastfm/stg_artists",
    "lastfm/stg_friends",
    "lastfm/stg_listens",
    "lastfm/stg_split",
    "lastfm/stg_tag_assignments",
    "lastfm/stg_tags",
    "lastfm/tag_assignments",
    "lastfm/tags",
    "lastfm/trained_model",
    "lastfm/users",
    "listening/ab_tests",
    "listening/champion",
    "listening/cold_start_report",
    "listening/experiments",
    "listening/explanations",
    "listening/graph",
    "listening/hpo_study",
    "listening/metric_report",
    "listening/model_comparison",
    "listening/model_registry",
    "listening/recommendations",
    "listening/split",
    "listening/time_series_cv",
    "listening/trained_model",
    "listening/user_segments",
    "marts/artists",
    "marts/genres",
    "marts/song_genres",
    "marts/songs",
    "marts/user_song_interactions",
    "marts/users",
    "playlists/ab_tests",
    "playlists/artist_genres",
    "playlists/artists",
    "playlists/champion",
    "playlists/experiments",
    "playlists/genres",
    "playlists/graph",
    "playlists/hpo_study",
    "playlists/metric_report",
    "playlists/model_comparison",
    "playlists/model_registry",
    "playlists/playlist_entries",
    "playlists/playlist_tracks",
    "playlists/playlists",
    "playlists/recommendations",
    "playlists/split",
    "playlists/track_features",
    "playlists/tracks",
    "playlists/trained_model",
    "raw/artist_genres",
    "raw/artists",
    "raw/genres",
    "raw/plays",
    "raw/song_genres",
    "raw/songs",
    "raw/users",
    "raw_lastfm/artists",
    "raw_lastfm/split_test",
    "raw_lastfm/split_train",
    "raw_lastfm/tags",
    "raw_lastfm/user_artists",
    "raw_lastfm/user_friends",
    "raw_lastfm/user_taggedartists",
    "staging/stg_artists",
    "staging/stg_genres",
    "staging/stg_plays",
    "staging/stg_song_genres",
    "staging/stg_songs",
    "staging/stg_users",
]


def _graph():
    return defs.resolve_asset_graph()


def test_asset_keys_snapshot():
    """An accidental rename or a lost asset fails here."""
    keys = sorted(key.to_user_string() for key in _graph().get_all_asset_keys())
    assert keys == EXPECTED_ASSET_KEYS


def test_every_asset_has_group_description_and_kinds():
    graph = _graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name and node.group_name != "default", key
        assert node.description, key
        assert node.kinds, key


def test_group_names_fit_the_lineage_graph():
    """Group boxes of the zoomed-out lineage graph show names up to GROUP_NAME_LIMIT characters whole;
    every group is <chain>_<domain label>."""
    groups = {_graph().get(key).group_name for key in _graph().get_all_asset_keys()}
    assert all(len(group) <= GROUP_NAME_LIMIT for group in groups), sorted(groups)
    assert {
        "listening_ingest",
        "listening_train",
        "listening_eval",
        "playlists_compare",
        "lastfm_hpo",
        "listening_explain",
        "playlists_landing",
    } <= groups
    assert all(group.split("_", 1)[0] in ("listening", "playlists", "lastfm") for group in groups)
    assert group_name("lastfm", "experiments") == "lastfm_compare" and group_name("lastfm", "sql") == "lastfm_sql"


def test_sql_dependencies_come_from_parsed_sql():
    """Parents = tables the SQL reads + tables its relationship tests look up (built first)."""
    graph = _graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["marts", "user_song_interactions"])).parent_keys}
    assert parents == {"staging/stg_plays", "marts/users", "marts/songs"}
    staged = {k.to_user_string() for k in graph.get(dg.AssetKey(["staging", "stg_plays"])).parent_keys}
    assert "raw/plays" in staged


def test_training_assets_are_partitioned_by_config_registry():
    """Dynamic partitions ``listening_configs``: listening/model_registry adds every registry config to them."""
    from spotify_engine_assets.defs.chain import register_configs
    from spotify_engine_assets.defs.listening import CHAIN

    graph = _graph()
    instance = dg.DagsterInstance.ephemeral()
    names, added = register_configs(CHAIN, instance)
    assert set(names) >= {"gat_basic", "gat_enhanced", "lightgcn", "most_popular"} and added == names
    assert register_configs(CHAIN, instance) == (names, [])  # idempotent
    for name in ("trained_model", "metric_report"):
        partitions = graph.get(dg.AssetKey(["listening", name])).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "listening_configs"
        assert partitions.get_partition_keys(dynamic_partitions_store=instance) == names
    assert graph.get(dg.AssetKey(["listening", "model_registry"])).group_name == "listening_train"


def test_gates_are_blocking_checks():
    graph = _graph()
    checks = {(key.asset_key.to_user_string(), key.name): graph.get_check_spec(key) for key in graph.asset_check_keys}
    # ndcg_gate -> quality_gate; champion_gate on listening/champion; splits_partition_interactions and
    # no_heldout_edges_in_message_passing -> leakage_free on listening/split
    for name in (
        ("listening/metric_report", "quality_gate"),
        ("listening/champion", "champion_gate"),
        ("listening/split", "leakage_free"),
    ):
        assert name in checks, name
        assert checks[name].blocking, name
    # a config's gate result belongs to its partition (partitioned asset checks)
    assert checks[("listening/metric_report", "quality_gate")].partitions_def.name == "listening_configs"
    # SQL data tests become checks too, error severity blocking and warn not
    assert checks[("staging/stg_plays", "unique__play_id")].blocking


def test_duckdb_writers_share_one_pool():
    graph = _graph()
    for key in (dg.AssetKey(["raw", "plays"]), dg.AssetKey(["staging", "stg_plays"]), dg.AssetKey(["marts", "songs"])):
        assert graph.get(key).pools == {"duckdb_warehouse"}, key


def test_playlist_chain_gates_and_sensor():
    """Playlist gates are blocking checks; the landing sensor exists; the playlist chain stays out
    of the spine's data stage groups (ingestion / sql / graph)."""
    graph = _graph()
    checks = {(key.asset_key.to_user_string(), key.name): graph.get_check_spec(key) for key in graph.asset_check_keys}
    for asset, name in (
        ("kaggle_raw/entries", "reject_rate_within_threshold"),
        ("kaggle_raw/landed_entries", "every_line_accounted"),
        ("playlists/split", "leakage_free"),  # was no_heldout_tracks_visible and playlist_splits_partition_edges
    ):
        assert checks[(asset, name)].blocking, (asset, name)
    assert "landing_sensor" in {sensor.name for sensor in defs.sensors}
    for key in ("playlists/playlist_tracks", "kaggle_raw/entries", "playlists/graph"):
        assert graph.get(dg.AssetKey.from_user_string(key)).group_name.startswith("playlists_"), key


FACTORY_ASSETS = (
    "graph",
    "split",
    "model_registry",
    "trained_model",
    "metric_report",
    "model_comparison",
    "experiments",
    "ab_tests",
    "champion",
    "hpo_study",
    "recommendations",
)


def test_chain_assets_follow_one_naming_scheme():
    """Every chain's graph, split and chain-factory assets are ``<chain>/<asset>`` in ``<chain>_*`` groups."""
    graph = _graph()
    keys = set(EXPECTED_ASSET_KEYS)
    for chain in ("listening", "playlists", "lastfm"):
        for asset in FACTORY_ASSETS:
            key = f"{chain}/{asset}"
            assert key in keys, key
            assert graph.get(dg.AssetKey([chain, asset])).group_name.startswith(f"{chain}_"), key
    assert all("/" in key for key in keys)  # no top-level key of the old naming (trained_model, lastfm_split, ...)
