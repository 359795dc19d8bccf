-- Genres of the playlists' artists, joined on the normalized artist name (optional enrichment:
-- empty when no data_w_genres.csv-format file was ingested).
SELECT DISTINCT
    a.artist_key,
    lower(trim(g.genre)) AS genre
FROM playlists.artists AS a
JOIN kaggle_raw.artist_genres AS g
    ON lower(trim(regexp_replace(strip_accents(g.artist_name), '\s+', ' ', 'g'))) = a.artist_key
