-- user -listens-> artist with the play count (all pairs; the split decides what a model sees).
SELECT user_id, artist_id, plays
FROM lastfm.stg_listens
ORDER BY user_id, artist_id
