"""Pure-data diagnostics: phase timing (and, later, memory snapshots and TP balance)."""
