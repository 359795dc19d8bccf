-- Genres without the generator's hidden popularity.
SELECT
    CAST(genre_id AS INTEGER) AS genre_id,
    trim(name) AS name
FROM raw.genres
WHERE genre_id IS NOT NULL
