"""
Upstream credentials beyond the URL's password: an OAuth 2.0 client
(token URL, client id, scope, the provider preset it came from, the client
secret and the refresh token, the two secrets encrypted) and a client
certificate (its PEM chain, and its key encrypted).  Nullable columns
added with C{ADD COLUMN}, which SQLite and PostgreSQL both take.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = [
    "oauth_token_url",
    "oauth_client_id",
    "oauth_scope",
    "oauth_provider",
    "oauth_client_secret",
    "oauth_refresh_token",
    "client_cert",
    "client_key",
]


def upgrade() -> None:
    for name in _COLUMNS:
        op.add_column("upstreams", sa.Column(name, sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upstreams") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
