-- Users with listening data (1,892), their artist, play and (symmetric) friend counts.
WITH both_ways AS (
    SELECT user_id, friend_id FROM lastfm.stg_friends
    UNION
    SELECT friend_id AS user_id, user_id AS friend_id FROM lastfm.stg_friends
),
friends AS (SELECT user_id, count(*) AS friends FROM both_ways WHERE user_id <> friend_id GROUP BY user_id)
SELECT l.user_id, count(*) AS artists, sum(l.plays) AS plays, coalesce(any_value(f.friends), 0) AS friends
FROM lastfm.stg_listens AS l
LEFT JOIN friends AS f USING (user_id)
GROUP BY l.user_id
ORDER BY l.user_id
