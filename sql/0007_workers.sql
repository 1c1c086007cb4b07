-- Worker heartbeats and queue backlog samples.
--
-- taskmon_workers: one row per worker process, keyed by the `worker` string of
-- task_execution_logs (host:pid). Each process's writer refreshes its row every
-- heartbeat_s seconds over its own connection and sets stopped_at on a clean
-- shutdown. A row not stopped whose last_seen is older than 3 x heartbeat_s
-- belongs to a dead worker: its running attempts are lost (taskmon.store.schema).
-- `name` (not `worker`) so that the lost rule's correlated subquery can refer
-- to task_execution_logs.worker unqualified.
CREATE TABLE taskmon_workers (
    name            text             PRIMARY KEY,
    host            text             NOT NULL,
    pid             integer          NOT NULL,
    broker          text,
    queue           text,
    taskmon_version text,
    taskiq_version  text,
    heartbeat_s     double precision NOT NULL CHECK (heartbeat_s > 0),
    started_at      timestamptz      NOT NULL,
    last_seen       timestamptz      NOT NULL,
    stopped_at      timestamptz,
    running         integer          NOT NULL DEFAULT 0,
    processed       bigint           NOT NULL DEFAULT 0,
    failed          bigint           NOT NULL DEFAULT 0
);
CREATE INDEX taskmon_workers_last_seen ON taskmon_workers (last_seen);

-- Queue depth sampled by each worker with its heartbeat: a short time series
-- per (broker, queue), trimmed by the writers and by retention.
-- oldest_wait_s: age of the oldest waiting message (NULL when unknown).
CREATE TABLE taskmon_queue_samples (
    broker        text             NOT NULL,
    queue         text             NOT NULL,
    sampled_at    timestamptz      NOT NULL,
    sampled_by    text             NOT NULL,
    depth         bigint           NOT NULL,
    oldest_wait_s double precision
);
CREATE INDEX taskmon_queue_samples_queue ON taskmon_queue_samples (broker, queue, sampled_at);
CREATE INDEX taskmon_queue_samples_time ON taskmon_queue_samples (sampled_at);
