-- user -friend- user, symmetric and without self loops, both ends users with listening data.
WITH listeners AS (SELECT DISTINCT user_id FROM lastfm.stg_listens),
both_ways AS (
    SELECT user_id, friend_id FROM lastfm.stg_friends
    UNION
    SELECT friend_id AS user_id, user_id AS friend_id FROM lastfm.stg_friends
)
SELECT b.user_id, b.friend_id
FROM both_ways AS b
WHERE b.user_id <> b.friend_id
  AND b.user_id IN (SELECT user_id FROM listeners)
  AND b.friend_id IN (SELECT user_id FROM listeners)
ORDER BY b.user_id, b.friend_id
