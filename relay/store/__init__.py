"""
The tenant store: SQLAlchemy models, Alembic migrations and the queries the
admin CLI and the relay use.  Nothing here knows of protocols or the reactor;
every function blocks, so the server calls them on a thread pool.
"""
