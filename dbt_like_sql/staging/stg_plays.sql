-- Typed, cleaned play events: one row per play with usable ids and a non-negative ms_played.
-- completion_ratio is recomputed from ms_played / track_duration_ms (the raw ratio is only a
-- fallback when the duration is missing) and clamped to [0, 1]. Duplicate play_ids are kept on
-- purpose: the unique test on play_id is the gate that reports them.
SELECT
    CAST(play_id AS BIGINT) AS play_id,
    CAST(session_id AS BIGINT) AS session_id,
    CAST(user_id AS INTEGER) AS user_id,
    CAST(song_id AS INTEGER) AS song_id,
    CAST(position_in_session AS SMALLINT) AS position_in_session,
    CAST(played_at AS TIMESTAMP) AS played_at,
    CAST(hour(played_at) AS TINYINT) AS hour_of_day,
    CAST(isodow(played_at) AS TINYINT) AS day_of_week,  -- ISO: 1 = Monday ... 7 = Sunday
    isodow(played_at) >= 6 AS is_weekend,
    CAST(ms_played AS INTEGER) AS ms_played,
    CAST(track_duration_ms AS INTEGER) AS track_duration_ms,
    least(
        greatest(
            coalesce(CAST(ms_played AS DOUBLE) / nullif(track_duration_ms, 0), completion_ratio),
            0.0
        ),
        1.0
    ) AS completion_ratio,
    CAST(skipped AS BOOLEAN) AS skipped
FROM raw.plays
WHERE play_id IS NOT NULL
  AND session_id IS NOT NULL
  AND user_id IS NOT NULL
  AND song_id IS NOT NULL
  AND ms_played >= 0
