-- Song-to-genre tags, one row per distinct (song, genre) pair.
SELECT DISTINCT
    CAST(song_id AS INTEGER) AS song_id,
    CAST(genre_id AS INTEGER) AS genre_id
FROM raw.song_genres
WHERE song_id IS NOT NULL
  AND genre_id IS NOT NULL
