-- user_taggedartists.dat: who tagged which artist with which tag, and when.
SELECT
    CAST(userID AS INTEGER) AS user_id,
    CAST(artistID AS INTEGER) AS artist_id,
    CAST(tagID AS INTEGER) AS tag_id,
    make_date(CAST(year AS INTEGER), CAST(month AS INTEGER), CAST(day AS INTEGER)) AS tagged_on
FROM raw_lastfm.user_taggedartists
WHERE year BETWEEN 1950 AND 2030 AND month BETWEEN 1 AND 12 AND day BETWEEN 1 AND 31
