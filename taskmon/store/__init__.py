"""PostgreSQL access: connections, migrations and the queries taskmon runs."""
