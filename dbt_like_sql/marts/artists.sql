-- Artists with their number of songs in the catalogue.
SELECT
    a.artist_id,
    a.name,
    count(s.song_id) AS n_songs
FROM staging.stg_artists AS a
LEFT JOIN staging.stg_songs AS s USING (artist_id)
GROUP BY a.artist_id, a.name
