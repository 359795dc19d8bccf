-- The fixed split as (user, artist, part); every pair must be a listen.
SELECT s.user_id, s.artist_id, s.part
FROM lastfm.stg_split AS s
ORDER BY s.part DESC, s.user_id, s.artist_id
