"""The CLI's commands, one module per group; each imports its heavy parts lazily."""
