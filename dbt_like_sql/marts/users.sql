-- User nodes of the graph.
SELECT user_id, user_type
FROM staging.stg_users
