-- One row per (user, song) pair that was played at least once: the implicit-feedback matrix.
WITH plays AS (
    SELECT user_id, song_id, played_at, ms_played, completion_ratio, skipped
    FROM staging.stg_plays
)
SELECT
    user_id,
    song_id,
    count(*) AS play_count,
    sum(ms_played) AS total_ms_played,
    avg(completion_ratio) AS mean_completion,
    count(*) FILTER (WHERE skipped) AS skip_count,
    min(played_at) AS first_played_at,
    max(played_at) AS last_played_at
FROM plays
GROUP BY user_id, song_id
