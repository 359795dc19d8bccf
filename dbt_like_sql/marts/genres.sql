-- Genres with their number of tagged songs.
SELECT
    g.genre_id,
    g.name,
    count(sg.song_id) AS n_songs
FROM staging.stg_genres AS g
LEFT JOIN staging.stg_song_genres AS sg USING (genre_id)
GROUP BY g.genre_id, g.name
