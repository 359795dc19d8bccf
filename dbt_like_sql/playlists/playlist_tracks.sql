-- Playlist-track edges: each track once per playlist, at the position of its first occurrence
-- (0-based, in file order: the base file first, then landed batches by batch name and line).
WITH ranked AS (
    SELECT playlist_key, track_key,
           row_number() OVER (PARTITION BY playlist_key ORDER BY batch_order, batch, line) AS entry_rank
    FROM playlists.playlist_entries
),
firsts AS (
    SELECT playlist_key, track_key, min(entry_rank) AS first_rank, count(*) AS occurrences
    FROM ranked
    GROUP BY playlist_key, track_key
)
SELECT
    playlist_key,
    track_key,
    (row_number() OVER (PARTITION BY playlist_key ORDER BY first_rank) - 1)::INTEGER AS position,
    occurrences
FROM firsts
