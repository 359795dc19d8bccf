-- One row per artist (normalized name); the display name is the most common spelling.
SELECT
    artist_key,
    mode(artist_name) AS artist_name,
    count(DISTINCT track_key) AS n_tracks
FROM playlists.playlist_entries
GROUP BY artist_key
