-- Tags (the genre role) with the number of distinct artists they were put on.
SELECT t.tag_id, t.tag, count(DISTINCT a.artist_id) AS artists
FROM lastfm.stg_tags AS t
LEFT JOIN lastfm.stg_tag_assignments AS a USING (tag_id)
GROUP BY t.tag_id, t.tag
ORDER BY t.tag_id
