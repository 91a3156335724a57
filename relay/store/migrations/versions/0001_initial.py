"""
Tenants, their logins, upstreams and sender domains, and the store
generation counter (one row, starting at 0).

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tenantId(table: str) -> sa.Column:
    return sa.Column(
        "tenant_id",
        sa.Integer,
        sa.ForeignKey("tenants.id", name=f"fk_{table}_tenant_id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("company", sa.String(255), nullable=False),
        sa.Column("org_id", sa.String(18), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="ck_tenants_status"),
    )
    op.create_table(
        "logins",
        sa.Column("id", sa.Integer),
        _tenantId("logins"),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_logins"),
        sa.UniqueConstraint("username", name="uq_logins_username"),
    )
    op.create_index("ix_logins_tenant_id", "logins", ["tenant_id"])
    op.create_table(
        "upstreams",
        sa.Column("id", sa.Integer),
        _tenantId("upstreams"),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_upstreams"),
    )
    op.create_index("ix_upstreams_tenant_id", "upstreams", ["tenant_id"])
    op.create_table(
        "sender_domains",
        sa.Column("id", sa.Integer),
        _tenantId("sender_domains"),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sender_domains"),
        sa.UniqueConstraint("tenant_id", "domain", name="uq_sender_domains_tenant_id_domain"),
    )
    generation = op.create_table(
        "store_generation",
        sa.Column("id", sa.Integer, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_store_generation"),
        sa.CheckConstraint("id = 1", name="ck_store_generation_single_row"),
    )
    op.bulk_insert(generation, [{"id": 1, "value": 0}])


def downgrade() -> None:
    for table in ("store_generation", "sender_domains", "upstreams", "logins", "tenants"):
        op.drop_table(table)
