-- The fixed benchmark split (lastfm2k_split_seed0): play counts are ignored by the protocol.
SELECT CAST(userID AS INTEGER) AS user_id, CAST(artistID AS INTEGER) AS artist_id, 'train' AS part
FROM raw_lastfm.split_train
UNION ALL
SELECT CAST(userID AS INTEGER) AS user_id, CAST(artistID AS INTEGER) AS artist_id, 'test' AS part
FROM raw_lastfm.split_test
