-- One row per track (normalized artist + track name); the display name is the most common spelling.
SELECT
    track_key,
    any_value(artist_key) AS artist_key,
    mode(track_name) AS track_name,
    count(DISTINCT playlist_key) AS n_playlists
FROM playlists.playlist_entries
GROUP BY track_key
