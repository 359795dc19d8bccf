-- Songs without the generator's hidden popularity.
SELECT
    CAST(song_id AS INTEGER) AS song_id,
    CAST(artist_id AS INTEGER) AS artist_id,
    trim(title) AS title,
    CAST(duration_ms AS INTEGER) AS duration_ms
FROM raw.songs
WHERE song_id IS NOT NULL
