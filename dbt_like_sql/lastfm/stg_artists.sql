-- Artists of artists.dat (UTF-8).
SELECT CAST(id AS INTEGER) AS artist_id, trim(name) AS name, url
FROM raw_lastfm.artists
WHERE id IS NOT NULL
