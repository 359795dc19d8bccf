"""Layer 1: the definitions load, and the asset graph has exactly the expected shape."""

import dagster as dg

from spotify_engine_assets.definitions import defs

EXPECTED_ASSET_KEYS = [
    "ab_tests",
    "champion",
    "cold_start_report",
    "experiments",
    "explanations",
    "ground_truth/user_genre_affinity",
    "hpo_study",
    "interaction_splits",
    "kaggle/source_files",
    "kaggle_raw/artist_genres",
    "kaggle_raw/entries",
    "kaggle_raw/landed_entries",
    "kaggle_raw/landed_rejects",
    "kaggle_raw/rejects",
    "kaggle_raw/track_features",
    "lastfm/artists",
    "lastfm/friendships",
    "lastfm/listens",
    "lastfm/split_pairs",
    "lastfm/stg_artists",
    "lastfm/stg_friends",
    "lastfm/stg_listens",
    "lastfm/stg_split",
    "lastfm/stg_tag_assignments",
    "lastfm/stg_tags",
    "lastfm/tag_assignments",
    "lastfm/tags",
    "lastfm/users",
    "lastfm_graph",
    "lastfm_metric_report",
    "lastfm_model_comparison",
    "lastfm_split",
    "lastfm_trained_model",
    "listening_graph",
    "marts/artists",
    "marts/genres",
    "marts/song_genres",
    "marts/songs",
    "marts/user_song_interactions",
    "marts/users",
    "metric_report",
    "model_comparison",
    "model_registry",
    "playlist_comparison",
    "playlist_graph",
    "playlist_model",
    "playlist_report",
    "playlist_splits",
    "playlists/artist_genres",
    "playlists/artists",
    "playlists/genres",
    "playlists/playlist_entries",
    "playlists/playlist_tracks",
    "playlists/playlists",
    "playlists/track_features",
    "playlists/tracks",
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
    "time_series_cv",
    "trained_model",
    "user_segments",
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


def test_sql_dependencies_come_from_parsed_sql():
    """Parents = tables the SQL reads + tables its relationship tests look up (built first)."""
    graph = _graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["marts", "user_song_interactions"])).parent_keys}
    assert parents == {"staging/stg_plays", "marts/users", "marts/songs"}
    staged = {k.to_user_string() for k in graph.get(dg.AssetKey(["staging", "stg_plays"])).parent_keys}
    assert "raw/plays" in staged


def test_training_assets_are_partitioned_by_config_registry():
    """Dynamic partitions ``model_configs``: model_registry adds every registry config to them."""
    from spotify_engine_assets.defs.registry import register_model_configs

    graph = _graph()
    instance = dg.DagsterInstance.ephemeral()
    names, added = register_model_configs(instance)
    assert set(names) >= {"gat_basic", "gat_enhanced", "lightgcn", "most_popular"} and added == names
    assert register_model_configs(instance) == (names, [])  # idempotent
    for name in ("trained_model", "metric_report"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "model_configs"
        assert partitions.get_partition_keys(dynamic_partitions_store=instance) == names
    assert graph.get(dg.AssetKey("model_registry")).group_name == "training"


def test_gates_are_blocking_checks():
    graph = _graph()
    checks = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys}
    for name in ("ndcg_gate", "champion_gate", "splits_partition_interactions", "no_heldout_edges_in_message_passing"):
        assert name in checks, name
        assert checks[name].blocking, name
    # SQL data tests become checks too, error severity blocking and warn not
    assert checks["unique__play_id"].blocking


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
        ("playlist_splits", "no_heldout_tracks_visible"),
        ("playlist_splits", "playlist_splits_partition_edges"),
    ):
        assert checks[(asset, name)].blocking, (asset, name)
    assert "landing_sensor" in {sensor.name for sensor in defs.sensors}
    for key in ("playlists/playlist_tracks", "kaggle_raw/entries", "playlist_graph"):
        assert graph.get(dg.AssetKey.from_user_string(key)).group_name.startswith("playlist_"), key
