-- Every artist is an item (17,632); listeners = distinct users in user_artists.dat.
SELECT a.artist_id, a.name, count(l.user_id) AS listeners
FROM lastfm.stg_artists AS a
LEFT JOIN lastfm.stg_listens AS l USING (artist_id)
GROUP BY a.artist_id, a.name
ORDER BY a.artist_id
