-- user_artists.dat: one row per (user, artist) with the play count.
SELECT CAST(userID AS INTEGER) AS user_id, CAST(artistID AS INTEGER) AS artist_id, CAST(weight AS BIGINT) AS plays
FROM raw_lastfm.user_artists
