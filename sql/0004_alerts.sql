-- Alert rules' states, one row per rule name (rules themselves live in the
-- config file). Kept in the database rather than in a hub's memory, so that a
-- restarted hub, a second hub or a `taskmon alerts check` run from cron see the
-- same state and a rule that is already firing is not notified again.
--
-- state: ok (the condition does not hold), pending (it holds, not yet for the
-- rule's `for`), firing, resolved (it fired and has cleared; behaves as ok).
-- since: when the row entered its state; clearing_since: while firing, when the
-- value first went back below the rule's hysteresis band (NULL while it is not).
CREATE TABLE taskmon_alerts (
    rule           text             PRIMARY KEY,
    state          text             NOT NULL DEFAULT 'ok'
                   CHECK (state IN ('ok', 'pending', 'firing', 'resolved')),
    since          timestamptz      NOT NULL,
    clearing_since timestamptz,
    fired_at       timestamptz,
    resolved_at    timestamptz,
    value          double precision,
    count          bigint,
    detail         text,
    checked_at     timestamptz      NOT NULL,
    error          text
);
