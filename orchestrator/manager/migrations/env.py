"""Alembic environment: the Store hands over its open connection (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from orchestrator.manager.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table_schema=context.config.attributes.get("schema"))
with context.begin_transaction():
    context.run_migrations()
