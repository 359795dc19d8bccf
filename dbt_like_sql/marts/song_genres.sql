-- Song-to-genre edges of the graph.
SELECT song_id, genre_id
FROM staging.stg_song_genres
