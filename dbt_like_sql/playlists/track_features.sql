-- Audio features of the playlists' tracks, joined on normalized artist and track name (optional
-- enrichment: empty when no tracks_features.csv-format file was ingested).
WITH features AS (
    SELECT
        lower(trim(regexp_replace(strip_accents(artist_name), '\s+', ' ', 'g'))) || ' :: '
            || lower(trim(regexp_replace(strip_accents(track_name), '\s+', ' ', 'g'))) AS track_key,
        danceability, energy, loudness, speechiness, acousticness, instrumentalness, liveness, valence, tempo
    FROM kaggle_raw.track_features
)
SELECT
    t.track_key,
    avg(f.danceability) AS danceability,
    avg(f.energy) AS energy,
    avg(f.loudness) AS loudness,
    avg(f.speechiness) AS speechiness,
    avg(f.acousticness) AS acousticness,
    avg(f.instrumentalness) AS instrumentalness,
    avg(f.liveness) AS liveness,
    avg(f.valence) AS valence,
    avg(f.tempo) AS tempo
FROM playlists.tracks AS t
JOIN features AS f USING (track_key)
GROUP BY t.track_key
