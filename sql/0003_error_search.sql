-- Error-text search: indexes for `error:"..."` filters and free words.
--
-- `error:"no such thing"` and free words compile to `ILIKE '%...%'` on
-- error_message and error_type (TaskFilter.to_sql). Without an index a page
-- for a text that is rare or absent reads the whole table (seconds at 10 M
-- rows), since every rejected row is walked along the created_at index.
--
-- * pg_trgm GIN indexes on both columns find the few matching rows directly.
-- * A b-tree on (status, created_at, id) of the rows with an error serves the
--   per-status branches of a history page (queries._history_sql) when an error
--   text is combined with status or task filters: a branch then walks only
--   rows that have an error, so `task:extract error:"timed out"` no longer
--   reads every successful row of the table to learn that none matches.
--   The planner picks it because `col ILIKE x` implies `col IS NOT NULL`.
--
-- All three are partial: only attempts with an error pay for them on write.
-- The task_name part of a word is resolved through task_names instead (see
-- taskmon.filters.word_task_names_sql).
--
-- They are an optimisation, never a requirement: a server without pg_trgm, or
-- a role not allowed to create it, still migrates (the block below raises a
-- NOTICE) and searches stay correct, only slower.
--
-- Building them locks out writers (CREATE INDEX takes a SHARE lock; this
-- migration runs in one transaction, so not CONCURRENTLY) for as long as the
-- build takes: some 16 s at 10 M rows. So on a table that is already large
-- the block skips them; build them there without blocking writers with
--
--     CREATE EXTENSION IF NOT EXISTS pg_trgm;
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_logs_errors_status
--         ON task_execution_logs (status, created_at DESC, id DESC)
--         WHERE error_message IS NOT NULL OR error_type IS NOT NULL;
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_logs_error_message_trgm
--         ON task_execution_logs USING gin (error_message gin_trgm_ops)
--         WHERE error_message IS NOT NULL;
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_logs_error_type_trgm
--         ON task_execution_logs USING gin (error_type gin_trgm_ops)
--         WHERE error_type IS NOT NULL;
--
-- (an index left INVALID by an interrupted CONCURRENTLY build must be dropped
-- first), or set `taskmon.search_index_max_bytes` (bytes of table heap,
-- default 256 MB, -1 for no limit) in the session that migrates, e.g.
-- PGOPTIONS='-c taskmon.search_index_max_bytes=-1' taskmon db upgrade.
DO $$
DECLARE
    max_bytes bigint;
    heap_bytes bigint;
BEGIN
    -- A block with EXCEPTION is a subtransaction: on an error in it, whatever it
    -- created is rolled back and the migration goes on without it.
    max_bytes := coalesce(
        nullif(current_setting('taskmon.search_index_max_bytes', true), '')::bigint,
        256 * 1024 * 1024);
    heap_bytes := pg_relation_size('task_execution_logs');
    IF max_bytes >= 0 AND heap_bytes > max_bytes THEN
        RAISE NOTICE 'taskmon: task_execution_logs holds % bytes, so the error-search '
            'indexes were not built now (it would block writers); see '
            'sql/0003_error_search.sql to build them CONCURRENTLY', heap_bytes;
        RETURN;
    END IF;
    CREATE INDEX IF NOT EXISTS idx_task_logs_errors_status
        ON task_execution_logs (status, created_at DESC, id DESC)
        WHERE error_message IS NOT NULL OR error_type IS NOT NULL;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX IF NOT EXISTS idx_task_logs_error_message_trgm
            ON task_execution_logs USING gin (error_message gin_trgm_ops)
            WHERE error_message IS NOT NULL;
        CREATE INDEX IF NOT EXISTS idx_task_logs_error_type_trgm
            ON task_execution_logs USING gin (error_type gin_trgm_ops)
            WHERE error_type IS NOT NULL;
    EXCEPTION WHEN OTHERS THEN
        -- pg_trgm missing (undefined_file), not allowed (insufficient_privilege),
        -- installed in a schema off the search_path (undefined_object), ...
        RAISE NOTICE 'taskmon: trigram indexes skipped (% %); error and word '
            'filters still work, without them', SQLSTATE, SQLERRM;
    END;
EXCEPTION WHEN OTHERS THEN
    -- e.g. a malformed taskmon.search_index_max_bytes (invalid_text_representation)
    RAISE NOTICE 'taskmon: error-search indexes skipped (% %)', SQLSTATE, SQLERRM;
END
$$;
