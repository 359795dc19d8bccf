-- user_friends.dat: directed friend pairs.
SELECT CAST(userID AS INTEGER) AS user_id, CAST(friendID AS INTEGER) AS friend_id
FROM raw_lastfm.user_friends
