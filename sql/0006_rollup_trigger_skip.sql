-- The rollup trigger: planned once per session, and skipped when nothing changes.
--
-- Until now each call ran the rollup statement through EXECUTE, which
-- PostgreSQL plans anew every time: a few milliseconds per writer batch,
-- whatever its size, paid every few attempts by a worker that is not busy. And
-- the writer's upsert (INSERT ... ON CONFLICT DO UPDATE) fires both statement
-- triggers every time, the UPDATE one with empty transition tables when no
-- attempt was already known, while a batch of attempts that only started
-- changes no rollup at all.
--
-- The function is generated here from taskmon_rollup_sql (0002), so the
-- statement stays written once: as static SQL in PL/pgSQL its plan is cached
-- for the session (transition tables are visible to the trigger function's own
-- statements). Its final SELECT gets a destination, as PL/pgSQL requires.
DO $do$
DECLARE
    finished CONSTANT text := $$status IN ('success', 'failed', 'retrying', 'lost')$$;
    on_insert text := regexp_replace(
        taskmon_rollup_sql('SELECT 1 AS sign, * FROM taskmon_new_rows'),
        'SELECT 1\s*$', 'SELECT 1 INTO done');
    on_update text := regexp_replace(
        taskmon_rollup_sql('SELECT 1 AS sign, * FROM taskmon_new_rows
             UNION ALL SELECT -1 AS sign, * FROM taskmon_old_rows'),
        'SELECT 1\s*$', 'SELECT 1 INTO done');
BEGIN
    IF on_insert NOT LIKE '%INTO done' OR on_update NOT LIKE '%INTO done' THEN
        RAISE EXCEPTION 'taskmon_rollup_sql no longer ends with SELECT 1';
    END IF;
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION taskmon_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    done integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM taskmon_new_rows) THEN
        RETURN NULL;  -- an upsert whose rows were all new, or all known
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_names (task_name)
        SELECT DISTINCT task_name FROM taskmon_new_rows ORDER BY task_name
        ON CONFLICT (task_name) DO NOTHING;
        IF EXISTS (SELECT 1 FROM taskmon_new_rows WHERE %1$s) THEN
            %2$s;
        END IF;
    ELSE
        INSERT INTO task_names (task_name)
        SELECT DISTINCT n.task_name FROM taskmon_new_rows AS n
        JOIN taskmon_old_rows AS o ON o.id = n.id
        WHERE o.task_name IS DISTINCT FROM n.task_name
        ORDER BY 1
        ON CONFLICT (task_name) DO NOTHING;
        IF EXISTS (SELECT 1 FROM taskmon_new_rows WHERE %1$s)
           OR EXISTS (SELECT 1 FROM taskmon_old_rows WHERE %1$s) THEN
            %3$s;
        END IF;
    END IF;
    RETURN NULL;
END
$body$
$fn$, finished, on_insert, on_update);
END
$do$;
