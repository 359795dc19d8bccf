-- Every accepted Kaggle-format row (the base file and every landed batch) with normalized keys.
-- Names normalize as: accents stripped, whitespace collapsed, trimmed, lower-cased. A playlist is
-- identified by its user and its (raw) name; a track by its normalized artist and track name.
WITH entries AS (
    SELECT batch, source_file, line, 0 AS batch_order, user_id, artistname, trackname, playlistname
    FROM kaggle_raw.entries
    UNION ALL
    SELECT batch, source_file, line, 1 AS batch_order, user_id, artistname, trackname, playlistname
    FROM kaggle_raw.landed_entries
),
normalized AS (
    SELECT
        *,
        lower(trim(regexp_replace(strip_accents(artistname), '\s+', ' ', 'g'))) AS artist_key,
        lower(trim(regexp_replace(strip_accents(trackname), '\s+', ' ', 'g'))) AS track_norm
    FROM entries
)
SELECT
    md5(user_id || chr(31) || playlistname) AS playlist_key,
    user_id,
    playlistname AS playlist_name,
    artist_key,
    artistname AS artist_name,
    artist_key || ' :: ' || track_norm AS track_key,
    trackname AS track_name,
    batch,
    batch_order,
    source_file,
    line
FROM normalized
