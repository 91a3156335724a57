"""
Tenant limits and rates, bounces, client networks, blocked domains, and
daily usage.

The tenants columns are added with C{ALTER TABLE ... ADD COLUMN} carrying
their check constraints inline, the one form both SQLite and PostgreSQL
accept: SQLite cannot add a constraint to an existing table, and rebuilding
C{tenants} would cascade-delete every login, upstream and domain.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateColumn

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Each limit: its column, its type and the pair column of a rate (set together or not at all).
_LIMITS = [
    ("max_size", sa.BigInteger, None),
    ("max_recipients", sa.Integer, None),
    ("rate_count", sa.Integer, None),
    ("rate_seconds", sa.Integer, "rate_count"),
    ("rate_recipients_count", sa.Integer, None),
    ("rate_recipients_seconds", sa.Integer, "rate_recipients_count"),
    ("max_concurrency", sa.Integer, None),
]
_COUNTERS = ["messages_relayed", "recipients_relayed", "bytes_relayed", "messages_rejected", "messages_failed"]


def _addTenantsColumn(column: sa.Column, *checks: tuple[str, str]) -> None:
    """Add a column to tenants with named check constraints, (name, condition) each."""
    specification = CreateColumn(column).compile(dialect=op.get_bind().dialect)
    constraints = "".join(f" CONSTRAINT ck_tenants_{name} CHECK ({condition})" for name, condition in checks)
    op.execute(f"ALTER TABLE tenants ADD COLUMN {specification}{constraints}")


def _tenantId(table: str, **options) -> sa.Column:
    return sa.Column(
        "tenant_id",
        sa.Integer,
        sa.ForeignKey("tenants.id", name=f"fk_{table}_tenant_id", ondelete="CASCADE"),
        nullable=False,
        **options,
    )


def upgrade() -> None:
    for name, type_, pair in _LIMITS:
        checks = [(name, f"{name} > 0")]
        if pair:
            checks.append((f"{name}_paired", f"({name} IS NULL) = ({pair} IS NULL)"))
        _addTenantsColumn(sa.Column(name, type_, nullable=True), *checks)
    _addTenantsColumn(sa.Column("allow_bounces", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "client_networks",
        sa.Column("id", sa.Integer),
        _tenantId("client_networks"),
        sa.Column("network", sa.String(43), nullable=False),
        sa.Column("no_auth", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_client_networks"),
        sa.UniqueConstraint("tenant_id", "network", name="uq_client_networks_tenant_id_network"),
    )
    op.create_table(
        "blocked_domains",
        sa.Column("id", sa.Integer),
        _tenantId("blocked_domains"),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_blocked_domains"),
        sa.UniqueConstraint("tenant_id", "domain", name="uq_blocked_domains_tenant_id_domain"),
    )
    op.create_table(
        "usage",
        _tenantId("usage", autoincrement=False),
        sa.Column("day", sa.Date, nullable=False),
        *[sa.Column(counter, sa.BigInteger, nullable=False) for counter in _COUNTERS],
        sa.PrimaryKeyConstraint("tenant_id", "day", name="pk_usage"),
    )


def downgrade() -> None:
    for table in ("usage", "blocked_domains", "client_networks"):
        op.drop_table(table)
    # A rate's period first: its check names the count.
    for name in ["allow_bounces", *reversed([name for name, _, _ in _LIMITS])]:
        op.drop_column("tenants", name)
