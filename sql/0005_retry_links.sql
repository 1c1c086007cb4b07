-- Retry links: find the retries of a task by the label that names it.
--
-- `taskmon retry` re-sends a recorded task as a new one labelled
-- `taskmon_retry_of = <original task id>`; the worker records that label with
-- the new attempt, and "retried as" is read back from it
-- (taskmon.store.retry.fetch_retried_as). The index is partial: only retried
-- tasks pay for it on write, and it stays as small as the number of retries.
--
-- Building it reads the whole table under a lock that holds writers back, so
-- on a table that is already large (over 256 MB of heap, or
-- `taskmon.retry_index_max_bytes` bytes, -1 for no limit) this migration skips
-- it and the lookup reads only the rows newer than the original instead;
-- build it there without blocking writers with
--
--     CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_logs_retry_of
--         ON task_execution_logs ((labels ->> 'taskmon_retry_of'))
--         WHERE labels ? 'taskmon_retry_of';
DO $$
DECLARE
    max_bytes bigint;
    heap_bytes bigint;
BEGIN
    max_bytes := coalesce(
        nullif(current_setting('taskmon.retry_index_max_bytes', true), '')::bigint,
        256 * 1024 * 1024);
    heap_bytes := pg_relation_size('task_execution_logs');
    IF max_bytes >= 0 AND heap_bytes > max_bytes THEN
        RAISE NOTICE 'taskmon: task_execution_logs holds % bytes, so the retry-link '
            'index was not built now (it would block writers); see '
            'sql/0005_retry_links.sql to build it CONCURRENTLY', heap_bytes;
        RETURN;
    END IF;
    CREATE INDEX IF NOT EXISTS idx_task_logs_retry_of
        ON task_execution_logs ((labels ->> 'taskmon_retry_of'))
        WHERE labels ? 'taskmon_retry_of';
EXCEPTION WHEN OTHERS THEN
    -- e.g. a malformed taskmon.retry_index_max_bytes (invalid_text_representation)
    RAISE NOTICE 'taskmon: retry-link index skipped (% %)', SQLSTATE, SQLERRM;
END
$$;
