"""
Alembic's environment for the store, run by L{relay.store.database.upgrade}
(there is no C{alembic.ini}): it migrates the connection that C{upgrade}
passes in C{config.attributes["connection"]}, inside that connection's
transaction.
"""

from __future__ import annotations

from alembic import context

from relay.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
