-- The song catalogue with its number of genre tags.
WITH genre_counts AS (
    SELECT song_id, count(*) AS n_genres
    FROM staging.stg_song_genres
    GROUP BY song_id
)
SELECT
    s.song_id,
    s.artist_id,
    s.title,
    s.duration_ms,
    coalesce(g.n_genres, 0) AS n_genres
FROM staging.stg_songs AS s
LEFT JOIN genre_counts AS g USING (song_id)
