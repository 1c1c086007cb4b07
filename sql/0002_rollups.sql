-- Rollups: metrics that do not grow with the number of rows.
--
-- Every finished attempt (status success, failed, retrying or lost) is counted
-- in a per-minute and a per-hour bucket of its created_at, per task name and
-- status, together with duration and queue-wait sums and a log-scale histogram
-- of both, and (for attempts that did not succeed) per error type. Statement
-- triggers with transition tables keep them current: one recorder batch is one
-- aggregate upsert per table, whatever its size.
--
-- An exact count for any window [since, until) is hour rows for the whole
-- hours + minute rows for the whole minutes at the edges + raw rows (index on
-- created_at) for the partial minutes at the edges. Histograms are kept per
-- hour and per 5 minutes (the edges), raw rows filling the partial 5 minutes;
-- percentiles come from them with a relative error of at most alpha (below).
-- Histograms and error groups are also kept per day (UTC): a window of days
-- reads whole days there, and hours, 5 minutes (or minutes) and raw rows only
-- at its edges. Counts need no day level: the throughput buckets of any
-- window shorter than 96 days are hours or less. "running" rows are
-- not rolled up: they change status, and the partial index on them answers
-- "running now" and "lost" directly.
--
-- Rollups are not deleted with raw rows (retention), so long windows still
-- answer; minute and 5-minute rows are only needed while the raw rows of the
-- same time exist (they are the edges of windows that start or end there).

-- Histogram bins: bin i holds values v with gamma^(i-1) < v <= gamma^i, where
-- gamma = (1 + alpha) / (1 - alpha) with alpha = 0.02. Reporting
-- 2 * gamma^i / (gamma + 1) for a value of bin i is off by at most alpha
-- (relatively), the DDSketch bound. Values <= 0 share bin -32768 (reported as
-- 0); NaN and infinities are not binned. The trigger and the queries call this
-- one function so they always agree.
CREATE FUNCTION taskmon_bin(v double precision) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN v >= 'Infinity'::float8 OR v <= '-Infinity'::float8 THEN NULL  -- NaN sorts above Infinity
        WHEN v <= 0 THEN (-32768)::smallint
        ELSE ceil(ln(v) / ln(1.02::float8 / 0.98::float8))::smallint
    END
$$;

-- The value a bin stands for (the inverse of taskmon_bin, up to alpha).
CREATE FUNCTION taskmon_bin_value(bin smallint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN bin = -32768 THEN 0::float8
        ELSE 2 * power(1.02::float8 / 0.98::float8, bin) / (1.02::float8 / 0.98::float8 + 1)
    END
$$;

-- One value's contribution to a packed histogram: 10^(12 * lane), where lane
-- 0 is bin -32768 (values <= 0) and lanes 1..700 are bins -179..520 (values
-- from 0.0008 ms to 12 days; values beyond are counted in the end lanes).
-- Plain SQL expressions (not STRICT, no FROM) so the planner inlines them.
CREATE FUNCTION taskmon_hist_unit(v double precision) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN taskmon_bin(v) IS NULL THEN NULL
        WHEN taskmon_bin(v) = -32768 THEN 1::numeric
        ELSE ('1e' || (12 * (least(greatest(taskmon_bin(v), -179), 520) + 180))::text)::numeric
    END
$$;

-- A metrics statement reads a few thousand rollup rows: starting parallel
-- workers for that costs more than it saves (some 10 ms on a busy machine),
-- yet the planner picks them once the tables are large. Calling this function
-- in a statement rules parallel plans out for it (the planner checks parallel
-- safety before it inlines the call, then folds it to true at no cost).
CREATE FUNCTION taskmon_serial() RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL UNSAFE AS $$ SELECT true $$;

CREATE TABLE task_rollup_minute (
    bucket            timestamptz      NOT NULL,
    task_name         text             NOT NULL,
    status            text             NOT NULL,
    n                 bigint           NOT NULL,
    duration_sum_ms   double precision NOT NULL DEFAULT 0,
    duration_n        bigint           NOT NULL DEFAULT 0,
    queue_wait_sum_ms double precision NOT NULL DEFAULT 0,
    queue_wait_n      bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, task_name, status)
);

CREATE TABLE task_rollup_hour (LIKE task_rollup_minute INCLUDING ALL);

-- Histograms, one row per (bucket, task, status, metric) -- metric 0: duration_ms,
-- 1: queue_wait_ms. The counts of all bins are packed into one numeric, bin
-- lane i holding its count at 10^(12 * i) (see taskmon_hist_unit), so that
-- merging histograms is sum(h): one addition per row, where one row per bin
-- would make a day's window read some 100 000 rows. Lanes hold counts below
-- 10^12 and the numeric stores only the span of occupied lanes.
CREATE TABLE task_hist_5min (
    bucket    timestamptz NOT NULL,
    task_name text        NOT NULL,
    status    text        NOT NULL,
    metric    smallint    NOT NULL,
    h         numeric     NOT NULL,
    PRIMARY KEY (bucket, task_name, status, metric)
);

CREATE TABLE task_hist_hour (LIKE task_hist_5min INCLUDING ALL);

CREATE TABLE task_hist_day (LIKE task_hist_5min INCLUDING ALL);

-- error_type '' stands for "none recorded" (a primary key column cannot be NULL)
CREATE TABLE task_error_minute (
    bucket     timestamptz NOT NULL,
    task_name  text        NOT NULL,
    status     text        NOT NULL,
    error_type text        NOT NULL,
    n          bigint      NOT NULL,
    last_seen  timestamptz,
    example    text,
    PRIMARY KEY (bucket, task_name, status, error_type)
);

CREATE TABLE task_error_hour (LIKE task_error_minute INCLUDING ALL);

CREATE TABLE task_error_day (LIKE task_error_minute INCLUDING ALL);

-- Every task name ever recorded (running ones included), so that a task
-- pattern can be resolved to exact names and use the composite index.
CREATE TABLE task_names (
    task_name  text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now()
);

-- The one statement that applies rows to every rollup. `src` is a query with
-- the columns of task_execution_logs plus `sign` (+1 adds a row, -1 removes
-- it); only constant text from this file is ever passed in. Each upsert sorts
-- its rows by key, so concurrent writers lock rollup rows in the same order
-- and cannot deadlock on them.
CREATE FUNCTION taskmon_rollup_sql(src text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT format($sql$
WITH d AS MATERIALIZED (
    SELECT s.sign, s.task_name, s.status, s.created_at,
           date_bin('1 minute', s.created_at, '2000-01-01 00:00:00+00') AS minute,
           CASE WHEN s.duration_ms > '-Infinity' AND s.duration_ms < 'Infinity'
                THEN s.duration_ms END AS dur,
           CASE WHEN s.queue_wait_ms > '-Infinity' AND s.queue_wait_ms < 'Infinity'
                THEN s.queue_wait_ms END AS qw,
           coalesce(s.error_type, '') AS error_type,
           left(s.error_message, 500) AS error_message
    FROM (%s) AS s
    WHERE s.status IN ('success', 'failed', 'retrying', 'lost')
),
c AS (
    SELECT minute, task_name, status, sum(sign) AS n,
           coalesce(sum(sign * dur), 0) AS ds, coalesce(sum(sign) FILTER (WHERE dur IS NOT NULL), 0) AS dn,
           coalesce(sum(sign * qw), 0) AS qs, coalesce(sum(sign) FILTER (WHERE qw IS NOT NULL), 0) AS qn
    FROM d GROUP BY minute, task_name, status
),
c_minute AS (
    INSERT INTO task_rollup_minute AS r
        (bucket, task_name, status, n, duration_sum_ms, duration_n, queue_wait_sum_ms, queue_wait_n)
    SELECT minute, task_name, status, n, ds, dn, qs, qn FROM c
    WHERE n <> 0 OR ds <> 0 OR dn <> 0 OR qs <> 0 OR qn <> 0
    ORDER BY minute, task_name, status
    ON CONFLICT (bucket, task_name, status) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        duration_sum_ms = r.duration_sum_ms + EXCLUDED.duration_sum_ms,
        duration_n = r.duration_n + EXCLUDED.duration_n,
        queue_wait_sum_ms = r.queue_wait_sum_ms + EXCLUDED.queue_wait_sum_ms,
        queue_wait_n = r.queue_wait_n + EXCLUDED.queue_wait_n
),
c_hour AS (
    INSERT INTO task_rollup_hour AS r
        (bucket, task_name, status, n, duration_sum_ms, duration_n, queue_wait_sum_ms, queue_wait_n)
    SELECT date_bin('1 hour', minute, '2000-01-01 00:00:00+00') AS hour, task_name, status,
           sum(n), sum(ds), sum(dn), sum(qs), sum(qn)
    FROM c GROUP BY hour, task_name, status
    HAVING sum(n) <> 0 OR sum(ds) <> 0 OR sum(dn) <> 0 OR sum(qs) <> 0 OR sum(qn) <> 0
    ORDER BY hour, task_name, status
    ON CONFLICT (bucket, task_name, status) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        duration_sum_ms = r.duration_sum_ms + EXCLUDED.duration_sum_ms,
        duration_n = r.duration_n + EXCLUDED.duration_n,
        queue_wait_sum_ms = r.queue_wait_sum_ms + EXCLUDED.queue_wait_sum_ms,
        queue_wait_n = r.queue_wait_n + EXCLUDED.queue_wait_n
),
h AS (
    SELECT date_bin('5 minutes', created_at, '2000-01-01 00:00:00+00') AS b5,
           task_name, status, metric, sum(sign * unit) AS h
    FROM (
        SELECT created_at, task_name, status, 0::smallint AS metric,
               taskmon_hist_unit(dur) AS unit, sign
        FROM d WHERE dur IS NOT NULL
        UNION ALL
        SELECT created_at, task_name, status, 1::smallint, taskmon_hist_unit(qw), sign
        FROM d WHERE qw IS NOT NULL
    ) AS b
    GROUP BY b5, task_name, status, metric
    HAVING sum(sign * unit) <> 0
),
h_5min AS (
    INSERT INTO task_hist_5min AS r (bucket, task_name, status, metric, h)
    SELECT b5, task_name, status, metric, h FROM h
    ORDER BY b5, task_name, status, metric
    ON CONFLICT (bucket, task_name, status, metric) DO UPDATE SET h = r.h + EXCLUDED.h
),
h_hour AS (
    INSERT INTO task_hist_hour AS r (bucket, task_name, status, metric, h)
    SELECT date_bin('1 hour', b5, '2000-01-01 00:00:00+00') AS hour,
           task_name, status, metric, sum(h)
    FROM h GROUP BY hour, task_name, status, metric
    HAVING sum(h) <> 0
    ORDER BY hour, task_name, status, metric
    ON CONFLICT (bucket, task_name, status, metric) DO UPDATE SET h = r.h + EXCLUDED.h
),
h_day AS (
    INSERT INTO task_hist_day AS r (bucket, task_name, status, metric, h)
    SELECT date_bin('1 day', b5, '2000-01-01 00:00:00+00') AS day,
           task_name, status, metric, sum(h)
    FROM h GROUP BY day, task_name, status, metric
    HAVING sum(h) <> 0
    ORDER BY day, task_name, status, metric
    ON CONFLICT (bucket, task_name, status, metric) DO UPDATE SET h = r.h + EXCLUDED.h
),
e AS (
    SELECT minute, task_name, status, error_type, sum(sign) AS n,
           max(created_at) FILTER (WHERE sign > 0) AS last_seen,
           (array_agg(error_message ORDER BY created_at DESC) FILTER (WHERE sign > 0))[1] AS example
    FROM d WHERE status <> 'success'
    GROUP BY minute, task_name, status, error_type
    HAVING sum(sign) <> 0
),
e_minute AS (
    INSERT INTO task_error_minute AS r (bucket, task_name, status, error_type, n, last_seen, example)
    SELECT minute, task_name, status, error_type, n, last_seen, example FROM e
    ORDER BY minute, task_name, status, error_type
    ON CONFLICT (bucket, task_name, status, error_type) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        last_seen = greatest(r.last_seen, EXCLUDED.last_seen),
        example = CASE WHEN r.last_seen IS NULL OR EXCLUDED.last_seen >= r.last_seen
                       THEN coalesce(EXCLUDED.example, r.example) ELSE r.example END
),
e_hour AS (
    INSERT INTO task_error_hour AS r (bucket, task_name, status, error_type, n, last_seen, example)
    SELECT date_bin('1 hour', minute, '2000-01-01 00:00:00+00') AS hour,
           task_name, status, error_type, sum(n), max(last_seen),
           (array_agg(example ORDER BY last_seen DESC NULLS LAST))[1]
    FROM e GROUP BY hour, task_name, status, error_type
    HAVING sum(n) <> 0
    ORDER BY hour, task_name, status, error_type
    ON CONFLICT (bucket, task_name, status, error_type) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        last_seen = greatest(r.last_seen, EXCLUDED.last_seen),
        example = CASE WHEN r.last_seen IS NULL OR EXCLUDED.last_seen >= r.last_seen
                       THEN coalesce(EXCLUDED.example, r.example) ELSE r.example END
),
e_day AS (
    INSERT INTO task_error_day AS r (bucket, task_name, status, error_type, n, last_seen, example)
    SELECT date_bin('1 day', minute, '2000-01-01 00:00:00+00') AS day,
           task_name, status, error_type, sum(n), max(last_seen),
           (array_agg(example ORDER BY last_seen DESC NULLS LAST))[1]
    FROM e GROUP BY day, task_name, status, error_type
    HAVING sum(n) <> 0
    ORDER BY day, task_name, status, error_type
    ON CONFLICT (bucket, task_name, status, error_type) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        last_seen = greatest(r.last_seen, EXCLUDED.last_seen),
        example = CASE WHEN r.last_seen IS NULL OR EXCLUDED.last_seen >= r.last_seen
                       THEN coalesce(EXCLUDED.example, r.example) ELSE r.example END
)
SELECT 1
$sql$, src)
$fn$;

-- Transition tables are visible to EXECUTE inside the trigger function (not
-- to functions it calls), hence EXECUTE here. For INSERT ... ON CONFLICT DO
-- UPDATE PostgreSQL fires both statement triggers: the INSERT one sees the
-- rows that were inserted, the UPDATE one the rows that hit a conflict (old
-- and new versions), so every row is counted exactly once.
CREATE FUNCTION taskmon_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_names (task_name)
        SELECT DISTINCT task_name FROM taskmon_new_rows ORDER BY task_name
        ON CONFLICT (task_name) DO NOTHING;
        EXECUTE taskmon_rollup_sql('SELECT 1 AS sign, * FROM taskmon_new_rows');
    ELSE
        INSERT INTO task_names (task_name)
        SELECT DISTINCT n.task_name FROM taskmon_new_rows AS n
        JOIN taskmon_old_rows AS o ON o.id = n.id
        WHERE o.task_name IS DISTINCT FROM n.task_name
        ORDER BY 1
        ON CONFLICT (task_name) DO NOTHING;
        EXECUTE taskmon_rollup_sql(
            'SELECT 1 AS sign, * FROM taskmon_new_rows
             UNION ALL SELECT -1 AS sign, * FROM taskmon_old_rows');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER taskmon_rollup_insert
    AFTER INSERT ON task_execution_logs
    REFERENCING NEW TABLE AS taskmon_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_trigger();

CREATE TRIGGER taskmon_rollup_update
    AFTER UPDATE ON task_execution_logs
    REFERENCING OLD TABLE AS taskmon_old_rows NEW TABLE AS taskmon_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskmon_rollup_trigger();

-- Rows deleted by retention stay counted on purpose (rollups outlive them);
-- a DELETE of rows that should not have been counted needs a rebuild.

-- Recompute every rollup from the raw rows (after a bulk load with triggers
-- disabled, or to repair). Takes a lock that keeps writers out meanwhile.
-- Rollups of time no longer covered by raw rows are lost.
CREATE FUNCTION taskmon_rebuild_rollups() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE task_execution_logs IN SHARE MODE;
    TRUNCATE task_rollup_minute, task_rollup_hour, task_hist_5min, task_hist_hour, task_hist_day,
             task_error_minute, task_error_hour, task_error_day;
    INSERT INTO task_names (task_name)
    SELECT DISTINCT task_name FROM task_execution_logs
    ON CONFLICT (task_name) DO NOTHING;
    EXECUTE taskmon_rollup_sql('SELECT 1 AS sign, * FROM task_execution_logs');
END
$$;

-- Rows recorded before this migration.
SELECT taskmon_rebuild_rollups();
