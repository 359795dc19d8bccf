-- (user, artist, tag) assignments on known users, artists and tags. The graph asset counts them
-- per (artist, tag) after dropping assignments on held-out (user, artist) pairs.
SELECT a.user_id, a.artist_id, a.tag_id, a.tagged_on
FROM lastfm.stg_tag_assignments AS a
JOIN lastfm.stg_artists USING (artist_id)
JOIN lastfm.stg_tags USING (tag_id)
WHERE a.user_id IN (SELECT user_id FROM lastfm.stg_listens)
ORDER BY a.user_id, a.artist_id, a.tag_id
