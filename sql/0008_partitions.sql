-- Time-partitioned task_execution_logs: one partition per day (by default) on
-- created_at, so that retention drops whole days instead of deleting rows.
--
-- Layout after this migration:
--   task_execution_logs            the partitioned parent (what every statement names)
--   task_execution_logs_pYYYYMMDD  one partition per span (a day by default), UTC-aligned,
--                                  created ahead of time (taskmon_ensure_partitions)
--   task_execution_logs_default    catches a row no partition covers yet (a clock far
--                                  off, a long outage of every writer): never a failed insert
--   task_execution_logs_legacy     the rows recorded before partitioning, attached as
--                                  one partition FROM (MINVALUE) TO (the conversion's bound);
--                                  dropped by retention once all of it has expired
--
-- A partitioned table's unique keys must hold the partition key, so the
-- attempt key becomes (task_id, attempt, created_at) and the primary key
-- (id, created_at). Both states of an attempt carry the same created_at (its
-- start as the worker saw it), so the writer's upsert still finds the row it
-- updates. ids come from taskmon_attempt_id_seq (an identity column cannot be
-- declared on a partitioned table before PostgreSQL 17), set past every id
-- the old table handed out.
--
-- An empty or small table (up to 64 MB of heap, or the session setting
-- taskmon.partition_inline_max_bytes, -1 for no limit) is converted right here,
-- in this migration's transaction. A larger one is left as it is, recording
-- goes on into it, and `taskmon db upgrade` converts it online afterwards
-- (taskmon.store.partitions.convert): the new unique indexes are built
-- CONCURRENTLY, the bound is checked with a constraint validated without
-- blocking writers, and only the final swap (rename, create the parent,
-- attach the old table as one partition) holds a lock, for milliseconds.

CREATE TABLE taskmon_partitioning (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- the width of each new partition; partitions are aligned to it from the Unix epoch (UTC)
    span         interval NOT NULL DEFAULT '1 day'
        CHECK (span >= interval '1 hour' AND span <= interval '31 days'),
    -- how far ahead of now partitions exist
    ahead        interval NOT NULL DEFAULT '2 days' CHECK (ahead >= interval '1 hour'),
    -- the upper bound of task_execution_logs_legacy, fixed when a conversion starts
    legacy_bound timestamptz
);
INSERT INTO taskmon_partitioning DEFAULT VALUES;

CREATE SEQUENCE taskmon_attempt_id_seq;

-- The start of the span-wide slot holding `t` (slots are aligned to the Unix epoch).
CREATE FUNCTION taskmon_partition_floor(t timestamptz, span interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM t) / extract(epoch FROM span))
                        * extract(epoch FROM span))
$$;

-- The attached partitions of task_execution_logs and their ranges (lo is
-- -infinity for MINVALUE; both are NULL for the default partition).
CREATE FUNCTION taskmon_partitions()
RETURNS TABLE (name text, lo timestamptz, hi timestamptz, is_default boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           CASE WHEN b.bound ~ 'FROM \(MINVALUE\)' THEN '-infinity'::timestamptz
                ELSE (regexp_match(b.bound, 'FROM \(''([^'']+)''\)'))[1]::timestamptz END,
           CASE WHEN b.bound ~ 'TO \(MAXVALUE\)' THEN 'infinity'::timestamptz
                ELSE (regexp_match(b.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz END,
           b.bound = 'DEFAULT'
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    WHERE i.inhparent = 'task_execution_logs'::regclass
    ORDER BY 2 NULLS LAST
$$;

-- Create and attach the partition [lo, hi). ATTACH takes only a SHARE UPDATE
-- EXCLUSIVE lock on the parent (writers go on); the CHECK constraint spares
-- PostgreSQL a validation scan. Rows of that range that went to the default
-- partition meanwhile move into the new partition first.
CREATE FUNCTION taskmon_create_partition(lo timestamptz, hi timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'task_execution_logs_p'
        || CASE WHEN lo = date_trunc('day', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                THEN to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD')
                ELSE to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS') END;
    strays boolean;
BEGIN
    EXECUTE format(
        'CREATE TABLE %I (LIKE task_execution_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
        ' INCLUDING STORAGE)', name);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (created_at >= %L AND created_at < %L)',
                   name, name || '_range', lo, hi);
    IF to_regclass('task_execution_logs_default') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM task_execution_logs_default'
                ' WHERE created_at >= $1 AND created_at < $2)' INTO strays USING lo, hi;
        IF strays THEN
            EXECUTE format(
                'WITH moved AS (DELETE FROM task_execution_logs_default'
                ' WHERE created_at >= $1 AND created_at < $2 RETURNING *)'
                ' INSERT INTO %I SELECT * FROM moved', name) USING lo, hi;
        END IF;
    END IF;
    EXECUTE format('ALTER TABLE task_execution_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
    RETURN name;
END
$$;

-- Make sure partitions cover [since, upto): by default from the slot holding
-- now() to now() + ahead. Gaps between existing partitions are filled with
-- span-aligned partitions (clipped to their neighbours). Returns how many were
-- created. Concurrent callers do not wait for each other: the one holding the
-- lock does the work, the others return 0 at once.
CREATE FUNCTION taskmon_ensure_partitions(since timestamptz DEFAULT NULL,
                                          upto timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cfg taskmon_partitioning%ROWTYPE;
    cur timestamptz;
    stop timestamptz;
    nxt timestamptz;
    created integer := 0;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'task_execution_logs'::regclass) <> 'p' THEN
        RETURN 0;
    END IF;
    -- "taskmon" + 1: the migration lock's neighbour
    IF NOT pg_try_advisory_xact_lock(x'7461736B6D6F6F'::bigint) THEN
        RETURN 0;
    END IF;
    SELECT * INTO cfg FROM taskmon_partitioning;
    cur := taskmon_partition_floor(coalesce(since, now()), cfg.span);
    stop := coalesce(upto, now() + cfg.ahead);
    WHILE cur < stop LOOP
        SELECT p.hi INTO nxt FROM taskmon_partitions() AS p
        WHERE NOT p.is_default AND p.lo <= cur AND cur < p.hi;
        IF FOUND THEN
            cur := nxt;  -- covered already: go on from the end of that partition
            CONTINUE;
        END IF;
        nxt := taskmon_partition_floor(cur, cfg.span) + cfg.span;
        SELECT least(nxt, min(p.lo)) INTO nxt FROM taskmon_partitions() AS p
        WHERE NOT p.is_default AND p.lo > cur;
        PERFORM taskmon_create_partition(cur, nxt);
        created := created + 1;
        cur := nxt;
    END LOOP;
    RETURN created;
END
$$;

-- Turn the plain table into the partitioned one, in the caller's transaction.
-- What an online conversion prepared beforehand (the unique indexes on the old
-- table, its bound constraint) is used as it is; what is missing is built
-- here, under the lock (fine for a small table). Returns what it did.
CREATE FUNCTION taskmon_partition_table() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    cfg taskmon_partitioning%ROWTYPE;
    seq text;
    top bigint;
    keep boolean;
    idx record;
    names text[] := '{}';
    defs text[] := '{}';
    i integer;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'task_execution_logs'::regclass) = 'p' THEN
        RETURN 'already partitioned';
    END IF;
    LOCK TABLE task_execution_logs IN ACCESS EXCLUSIVE MODE;
    SELECT * INTO cfg FROM taskmon_partitioning FOR UPDATE;
    keep := EXISTS (SELECT 1 FROM task_execution_logs);

    -- ids go on from where the identity column's sequence stopped
    seq := pg_get_serial_sequence('task_execution_logs', 'id');
    IF seq IS NOT NULL THEN
        EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s', seq)
            INTO top;
        top := greatest(top, (SELECT max(id) FROM task_execution_logs), 1);
        PERFORM setval('taskmon_attempt_id_seq', top);
        ALTER TABLE task_execution_logs ALTER COLUMN id DROP IDENTITY;
    END IF;
    ALTER TABLE task_execution_logs ALTER COLUMN id SET DEFAULT nextval('taskmon_attempt_id_seq');

    -- the old table's plain indexes: the parent gets the same ones, under their names
    FOR idx IN
        SELECT c.relname::text AS name, pg_get_indexdef(x.indexrelid) AS def
        FROM pg_index AS x JOIN pg_class AS c ON c.oid = x.indexrelid
        WHERE x.indrelid = 'task_execution_logs'::regclass AND x.indisvalid
          AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = x.indexrelid)
          AND c.relname NOT LIKE 'task\_execution\_logs\_legacy\_%'
        ORDER BY 1
    LOOP
        names := names || idx.name;
        defs := defs || substring(idx.def FROM ' USING .*$');
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.name, left(idx.name, 48) || '_legacy');
    END LOOP;
    ALTER TABLE task_execution_logs RENAME CONSTRAINT task_execution_logs_pkey
        TO task_execution_logs_pkey_old;
    ALTER TABLE task_execution_logs RENAME CONSTRAINT task_execution_logs_attempt_key
        TO task_execution_logs_attempt_key_old;
    DROP TRIGGER IF EXISTS taskmon_rollup_insert ON task_execution_logs;
    DROP TRIGGER IF EXISTS taskmon_rollup_update ON task_execution_logs;
    ALTER TABLE task_execution_logs RENAME TO task_execution_logs_legacy;

    CREATE TABLE task_execution_logs (
        LIKE task_execution_logs_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
    ) PARTITION BY RANGE (created_at);
    ALTER TABLE task_execution_logs DROP CONSTRAINT IF EXISTS task_execution_logs_legacy_bound;
    ALTER TABLE task_execution_logs
        ADD CONSTRAINT task_execution_logs_pkey PRIMARY KEY (id, created_at),
        ADD CONSTRAINT task_execution_logs_attempt_key UNIQUE (task_id, attempt, created_at);
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        EXECUTE format('CREATE INDEX %I ON task_execution_logs %s', names[i], defs[i]);
    END LOOP;
    CREATE TRIGGER taskmon_rollup_insert
        AFTER INSERT ON task_execution_logs
        REFERENCING NEW TABLE AS taskmon_new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_trigger();
    CREATE TRIGGER taskmon_rollup_update
        AFTER UPDATE ON task_execution_logs
        REFERENCING OLD TABLE AS taskmon_old_rows NEW TABLE AS taskmon_new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_trigger();

    IF keep THEN
        -- the old rows stay where they are: the old table becomes one partition
        IF cfg.legacy_bound IS NULL THEN
            cfg.legacy_bound := greatest(
                taskmon_partition_floor(now(), cfg.span) + 2 * cfg.span,
                taskmon_partition_floor((SELECT max(created_at) FROM task_execution_logs_legacy),
                                        cfg.span) + cfg.span);
            UPDATE taskmon_partitioning SET legacy_bound = cfg.legacy_bound;
        END IF;
        CREATE UNIQUE INDEX IF NOT EXISTS task_execution_logs_legacy_pkey
            ON task_execution_logs_legacy (id, created_at);
        CREATE UNIQUE INDEX IF NOT EXISTS task_execution_logs_legacy_attempt_key
            ON task_execution_logs_legacy (task_id, attempt, created_at);
        ALTER TABLE task_execution_logs_legacy
            DROP CONSTRAINT task_execution_logs_pkey_old,
            DROP CONSTRAINT task_execution_logs_attempt_key_old,
            ADD CONSTRAINT task_execution_logs_legacy_pkey
                PRIMARY KEY USING INDEX task_execution_logs_legacy_pkey,
            ADD CONSTRAINT task_execution_logs_legacy_attempt_key
                UNIQUE USING INDEX task_execution_logs_legacy_attempt_key;
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = 'task_execution_logs_legacy'::regclass
                         AND conname = 'task_execution_logs_legacy_bound' AND convalidated) THEN
            ALTER TABLE task_execution_logs_legacy
                DROP CONSTRAINT IF EXISTS task_execution_logs_legacy_bound;
            EXECUTE format('ALTER TABLE task_execution_logs_legacy ADD CONSTRAINT '
                           'task_execution_logs_legacy_bound CHECK (created_at < %L)',
                           cfg.legacy_bound);
        END IF;
        EXECUTE format('ALTER TABLE task_execution_logs ATTACH PARTITION task_execution_logs_legacy'
                       ' FOR VALUES FROM (MINVALUE) TO (%L)', cfg.legacy_bound);
    ELSE
        DROP TABLE task_execution_logs_legacy;
    END IF;
    CREATE TABLE task_execution_logs_default PARTITION OF task_execution_logs DEFAULT;
    PERFORM taskmon_ensure_partitions();
    RETURN CASE WHEN keep THEN 'partitioned; the rows so far are in task_execution_logs_legacy'
                ELSE 'partitioned' END;
END
$$;

DO $$
DECLARE
    max_bytes bigint;
    heap_bytes bigint;
BEGIN
    max_bytes := coalesce(
        nullif(current_setting('taskmon.partition_inline_max_bytes', true), '')::bigint,
        64 * 1024 * 1024);
    heap_bytes := pg_relation_size('task_execution_logs');
    IF max_bytes >= 0 AND heap_bytes > max_bytes THEN
        RAISE NOTICE 'taskmon: task_execution_logs holds % bytes, so it was not partitioned '
            'now (it would block writers); run `taskmon db upgrade` to convert it online',
            heap_bytes;
        RETURN;
    END IF;
    PERFORM taskmon_partition_table();
END
$$;
