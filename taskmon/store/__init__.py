"""PostgreSQL access, the only code that knows SQL (besides the recorder's writer).

* ``columns``: the columns of ``task_execution_logs``, declared once, and
  :class:`~taskmon.store.columns.AttemptRow`; ``schema``: facts about a row
  (statuses, the read columns, the lost rule);
* ``db``, ``embedded``, ``migrations``: connections, the embedded server, the schema;
* ``ingest``: the writer's upsert and event sequence;
* ``filter_sql``: a parsed filter compiled to a SQL condition;
* ``history``, ``stats``: what the CLI and the TUI read;
* ``retention``: retention's statements; ``maintenance``: rollup rebuilds and
  concurrent index builds.
"""
