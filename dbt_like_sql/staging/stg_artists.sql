-- Artists without the generator's hidden popularity.
SELECT
    CAST(artist_id AS INTEGER) AS artist_id,
    trim(name) AS name
FROM raw.artists
WHERE artist_id IS NOT NULL
