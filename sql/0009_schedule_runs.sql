-- Schedule runs: the attempts a TaskIQ scheduler sent, by task name and time.
--
-- TaskIQ's scheduler labels every message it sends with `schedule_id`;
-- `taskmon schedules` and the `schedule_missed` alert read a schedule's runs
-- by task name and window among those (taskmon.store.schedules). The index is
-- partial: only scheduled attempts pay for it on write, and a busy task that
-- also runs on a schedule is not scanned whole to find its scheduled runs.
--
-- Building it reads the whole table under a lock that holds writers back, so
-- on a table that is already large (over 256 MB of heap, or
-- `taskmon.schedule_index_max_bytes` bytes, -1 for no limit) this migration
-- skips it and the reads filter the task's rows instead; build it without
-- blocking writers with `taskmon db search-indexes`.
DO $$
DECLARE
    max_bytes bigint;
    heap_bytes bigint;
BEGIN
    max_bytes := coalesce(
        nullif(current_setting('taskmon.schedule_index_max_bytes', true), '')::bigint,
        256 * 1024 * 1024);
    -- a partitioned table's own size is 0: count its partitions
    SELECT coalesce(sum(pg_relation_size(relid)), 0) INTO heap_bytes
      FROM pg_partition_tree('task_execution_logs');
    IF max_bytes >= 0 AND heap_bytes > max_bytes THEN
        RAISE NOTICE 'taskmon: task_execution_logs holds % bytes, so the schedule-run '
            'index was not built now (it would block writers); run `taskmon db '
            'search-indexes` to build it CONCURRENTLY', heap_bytes;
        RETURN;
    END IF;
    CREATE INDEX IF NOT EXISTS idx_task_logs_scheduled
        ON task_execution_logs (task_name, created_at)
        WHERE labels ? 'schedule_id';
EXCEPTION WHEN OTHERS THEN
    -- e.g. a malformed taskmon.schedule_index_max_bytes (invalid_text_representation)
    RAISE NOTICE 'taskmon: schedule-run index skipped (% %)', SQLSTATE, SQLERRM;
END
$$;
