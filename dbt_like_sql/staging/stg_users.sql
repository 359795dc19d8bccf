-- Users: id and segment only (activity is the generator's hidden truth).
SELECT
    CAST(user_id AS INTEGER) AS user_id,
    lower(trim(user_type)) AS user_type
FROM raw.users
WHERE user_id IS NOT NULL
