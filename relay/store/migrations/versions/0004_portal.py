"""
The portal and the API: plans and trials, portal accounts with their
sessions and e-mailed tokens, API tokens, the activity log, sender domains
proven by DNS, and who added an upstream.

Domains already stored were added by operators: they count as verified.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STAMP = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _fk(column: str, table: str, target: str, nullable: bool) -> sa.Column:
    return sa.Column(
        column,
        sa.Integer,
        sa.ForeignKey(f"{target}.id", name=f"fk_{table}_{column}", ondelete="CASCADE"),
        nullable=nullable,
    )


def upgrade() -> None:
    columns: list[sa.Column] = [
        sa.Column("plan", sa.String(63)),
        sa.Column("trial_ends_at", _STAMP),
        sa.Column("trial_messages", sa.Integer),
        sa.Column("activity_retention_days", sa.Integer),
    ]
    for column in columns:
        op.add_column("tenants", column)
    op.add_column("sender_domains", sa.Column("verified_at", _STAMP, nullable=True))
    op.add_column("sender_domains", sa.Column("verify_token", sa.String(64), nullable=True))
    op.execute("UPDATE sender_domains SET verified_at = CURRENT_TIMESTAMP")
    op.add_column("upstreams", sa.Column("origin", sa.String(16), nullable=False, server_default="operator"))

    limits = [
        sa.Column("max_size", sa.BigInteger),
        sa.Column("max_recipients", sa.Integer),
        sa.Column("rate_count", sa.Integer),
        sa.Column("rate_seconds", sa.Integer),
        sa.Column("rate_recipients_count", sa.Integer),
        sa.Column("rate_recipients_seconds", sa.Integer),
        sa.Column("max_concurrency", sa.Integer),
    ]
    op.create_table(
        "plans", _id(), sa.Column("name", sa.String(63), nullable=False), *limits,
        sa.UniqueConstraint("name", name="uq_plans_name"),
    )  # fmt: skip
    op.create_table(
        "accounts",
        _id(),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        _fk("tenant_id", "accounts", "tenants", nullable=True),
        sa.Column("operator", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("verified_at", _STAMP),
        sa.Column("created_at", _STAMP, nullable=False),
        sa.UniqueConstraint("email", name="uq_accounts_email"),
    )
    op.create_index("ix_accounts_tenant_id", "accounts", ["tenant_id"])
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        _fk("account_id", "web_sessions", "accounts", nullable=True),
        sa.Column("created_at", _STAMP, nullable=False),
        sa.Column("expires_at", _STAMP, nullable=False),
    )
    op.create_index("ix_web_sessions_account_id", "web_sessions", ["account_id"])
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        _fk("account_id", "account_tokens", "accounts", nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("expires_at", _STAMP, nullable=False),
        sa.Column("used_at", _STAMP),
    )
    op.create_index("ix_account_tokens_account_id", "account_tokens", ["account_id"])
    op.create_table(
        "api_tokens",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _fk("tenant_id", "api_tokens", "tenants", nullable=True),
        sa.Column("created_at", _STAMP, nullable=False),
        sa.Column("last_used_at", _STAMP),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_index("ix_api_tokens_tenant_id", "api_tokens", ["tenant_id"])
    op.create_table(
        "activity",
        _id(),
        _fk("tenant_id", "activity", "tenants", nullable=False),
        sa.Column("at", _STAMP, nullable=False),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("upstream", sa.Text),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
    )
    op.create_index("ix_activity_tenant_id_at", "activity", ["tenant_id", "at"])
    op.create_index("ix_activity_tenant_id_queue_id", "activity", ["tenant_id", "queue_id"])


def downgrade() -> None:
    for table in ("activity", "api_tokens", "account_tokens", "web_sessions", "accounts", "plans"):
        op.drop_table(table)
    # Plain DROP COLUMN (SQLite >= 3.35): rebuilding tenants would turn 0002's inline checks into
    # table checks that its own downgrade cannot drop, and cascade-delete every row that refers to it.
    op.drop_column("upstreams", "origin")
    op.drop_column("sender_domains", "verify_token")
    op.drop_column("sender_domains", "verified_at")
    for name in ("activity_retention_days", "trial_messages", "trial_ends_at", "plan"):
        op.drop_column("tenants", name)
