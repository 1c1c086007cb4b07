-- One row per attempt of a task execution.
--
-- A task retried by SimpleRetryMiddleware/SmartRetryMiddleware keeps its
-- task_id; each re-kick is a new attempt (label `_retries`), hence the unique
-- (task_id, attempt) that the recorder upserts on.
CREATE TABLE task_execution_logs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       text        NOT NULL,
    attempt       integer     NOT NULL DEFAULT 0,
    task_name     text        NOT NULL,
    status        text        NOT NULL
        CHECK (status IN ('pending', 'running', 'success', 'failed', 'retrying', 'lost')),
    worker        text,
    queue         text,
    labels        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    params        jsonb,
    error_type    text,
    error_message text,
    traceback     text,
    -- the task's `timeout` label in seconds, kept as a column so that the
    -- "lost" rule (running for longer than 2 x timeout) needs no JSON parsing
    timeout_s     double precision,
    enqueued_at   timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    duration_ms   double precision,
    queue_wait_ms double precision,
    -- when the attempt began (its start time as seen by the worker); the
    -- history order and every time window use this column
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_execution_logs_attempt_key UNIQUE (task_id, attempt)
);

-- Newest-first history and keyset pagination on (created_at, id); also every
-- time-window scan without a more selective filter.
CREATE INDEX idx_task_logs_created_at ON task_execution_logs (created_at DESC, id DESC);

-- The seed's composite index: "failed extract tasks of the last 7 days". With
-- `id` last it also serves keyset pages for one task name (and status); without
-- it the planner never picks it for ORDER BY created_at DESC, id DESC.
CREATE INDEX idx_task_logs_composite
    ON task_execution_logs (task_name, status, created_at DESC, id DESC);

-- Status-only filters ("everything failed since 7d") without a task name.
CREATE INDEX idx_task_logs_status_created ON task_execution_logs (status, created_at DESC, id DESC);

-- Attempts still running: the "running now" and "lost" counts read only these.
CREATE INDEX idx_task_logs_running ON task_execution_logs (created_at) WHERE status = 'running';

-- Live events carry a global, ever-increasing `seq` taken from this sequence
-- in the transaction that records their rows, so a subscriber can resume
-- across hub restarts and across every worker process.
CREATE SEQUENCE taskmon_event_seq;
