-- One row per playlist (user + name) with its number of distinct tracks.
SELECT
    e.playlist_key,
    any_value(e.user_id) AS user_id,
    any_value(e.playlist_name) AS playlist_name,
    count(*) AS n_entries,
    count(DISTINCT e.track_key) AS n_tracks
FROM playlists.playlist_entries AS e
GROUP BY e.playlist_key
