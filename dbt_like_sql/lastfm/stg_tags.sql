-- tags.dat (decoded from Latin-1 by the loader).
SELECT CAST(tagID AS INTEGER) AS tag_id, tagValue AS tag
FROM raw_lastfm.tags
