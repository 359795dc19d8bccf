-- Genres that at least one playlist artist has.
SELECT genre, count(DISTINCT artist_key) AS n_artists
FROM playlists.artist_genres
GROUP BY genre
