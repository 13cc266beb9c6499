"""Alembic migrations of the manager's store; run at every start by ``Store.migrate``."""
