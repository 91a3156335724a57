"""
The store's tables, as SQLAlchemy declarative models.

A change here needs a migration in C{relay/store/migrations/versions/};
C{tests/test_store.py} checks that the migrations build exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Account",
    "AccountToken",
    "Activity",
    "ApiToken",
    "Base",
    "BlockedDomain",
    "ClientNetwork",
    "Login",
    "Plan",
    "SenderDomain",
    "StoreGeneration",
    "Tenant",
    "UpstreamRecord",
    "Usage",
    "WebSession",
]

ACTIVE = "active"
SUSPENDED = "suspended"
OPERATOR = "operator"  # who added an upstream or a sender domain
TENANT = "tenant"


class UTCDateTime(TypeDecorator[datetime]):
    """
    A timestamp stored in UTC and always read back timezone-aware (SQLite
    keeps no time zone).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _positive(column: str) -> CheckConstraint:
    """A check that a column, when set, is above zero (named C{ck_tenants_COLUMN})."""
    return CheckConstraint(f"{column} > 0", name=column)


def _pairedWith(column: str, other: str) -> CheckConstraint:
    """A check that two columns (a rate's count and period) are set together or not at all."""
    return CheckConstraint(f"({column} IS NULL) = ({other} IS NULL)", name=f"{column}_paired")


class Base(DeclarativeBase):
    """The models' base, naming constraints the way the migrations do."""

    metadata = MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        }
    )


class Tenant(Base):
    """
    A customer: the owner of logins, upstreams, sender domains, client
    networks, blocked domains and usage.  A limit that is C{NULL} is not
    set; a rate is a count per period in seconds, both set or neither.
    """

    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint(f"status IN ('{ACTIVE}', '{SUSPENDED}')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    company: Mapped[str] = mapped_column(String(255))
    org_id: Mapped[str | None] = mapped_column(String(18))
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    max_size: Mapped[int | None] = mapped_column(BigInteger, _positive("max_size"))
    max_recipients: Mapped[int | None] = mapped_column(Integer, _positive("max_recipients"))
    rate_count: Mapped[int | None] = mapped_column(Integer, _positive("rate_count"))
    rate_seconds: Mapped[int | None] = mapped_column(
        Integer, _positive("rate_seconds"), _pairedWith("rate_seconds", "rate_count")
    )
    rate_recipients_count: Mapped[int | None] = mapped_column(Integer, _positive("rate_recipients_count"))
    rate_recipients_seconds: Mapped[int | None] = mapped_column(
        Integer, _positive("rate_recipients_seconds"), _pairedWith("rate_recipients_seconds", "rate_recipients_count")
    )
    max_concurrency: Mapped[int | None] = mapped_column(Integer, _positive("max_concurrency"))
    allow_bounces: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    plan: Mapped[str | None] = mapped_column(String(63))  # a Plan's name; its limits apply where the tenant sets none
    trial_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # set while on trial
    trial_messages: Mapped[int | None] = mapped_column(Integer)  # messages the trial allows in all
    activity_retention_days: Mapped[int | None] = mapped_column(Integer)  # None: --activity-retention-days

    logins: Mapped[list[Login]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True, order_by="Login.username"
    )
    upstreams: Mapped[list[UpstreamRecord]] = relationship(
        back_populates="tenant",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by=lambda: (UpstreamRecord.priority, UpstreamRecord.id),
    )
    domains: Mapped[list[SenderDomain]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True, order_by="SenderDomain.domain"
    )
    networks: Mapped[list[ClientNetwork]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ClientNetwork.network"
    )
    blocklist: Mapped[list[BlockedDomain]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="BlockedDomain.domain"
    )


class Login(Base):
    """SMTP AUTH credentials of a tenant; user names are unique and case-sensitive."""

    __tablename__ = "logins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    tenant: Mapped[Tenant] = relationship(back_populates="logins")


class UpstreamRecord(Base):
    """
    A tenant's upstream: the URL without its password, and the password
    encrypted with the key ring (L{relay.store.secrets.KeyRing}); an OAuth
    client (its secret and refresh token encrypted) and a client
    certificate (its key encrypted), when it has them.
    """

    __tablename__ = "upstreams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=10)
    oauth_token_url: Mapped[str | None] = mapped_column(Text)
    oauth_client_id: Mapped[str | None] = mapped_column(Text)
    oauth_scope: Mapped[str | None] = mapped_column(Text)
    oauth_provider: Mapped[str | None] = mapped_column(Text)  # the --oauth-provider preset, for consent
    oauth_client_secret: Mapped[str | None] = mapped_column(Text)  # encrypted
    oauth_refresh_token: Mapped[str | None] = mapped_column(Text)  # encrypted
    client_cert: Mapped[str | None] = mapped_column(Text)  # PEM chain
    client_key: Mapped[str | None] = mapped_column(Text)  # encrypted PEM
    origin: Mapped[str] = mapped_column(String(16), default=OPERATOR, server_default=OPERATOR)  # who added it

    tenant: Mapped[Tenant] = relationship(back_populates="upstreams")


# The encrypted columns of an upstream, all re-encrypted by secrets rotate.
SECRET_COLUMNS = ("secret", "oauth_client_secret", "oauth_refresh_token", "client_key")


class _TenantListed:
    """A row of one of a tenant's lists (deleted with the tenant); each list holds a value once."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class SenderDomain(_TenantListed, Base):
    """
    A domain a tenant may send from: C{example.com}, or C{*.example.com} for
    its subdomains.  One a tenant added counts once proven theirs (a DNS TXT
    record with C{verify_token}): C{verified_at} is set then; an operator's
    counts at once.
    """

    __tablename__ = "sender_domains"
    __table_args__ = (UniqueConstraint("tenant_id", "domain"),)

    domain: Mapped[str] = mapped_column(String(255))
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verify_token: Mapped[str | None] = mapped_column(String(64))

    tenant: Mapped[Tenant] = relationship(back_populates="domains")


class ClientNetwork(_TenantListed, Base):
    """
    A network a tenant's clients connect from, in normalised CIDR form
    (C{192.0.2.0/24}, C{2001:db8::/48}).  C{no_auth}: clients from it act
    as the tenant without AUTH; otherwise it restricts where AUTH is
    accepted from.
    """

    __tablename__ = "client_networks"
    __table_args__ = (UniqueConstraint("tenant_id", "network"),)

    network: Mapped[str] = mapped_column(String(43))  # the longest IPv6 address (39) and "/128"
    no_auth: Mapped[bool] = mapped_column(Boolean)


class BlockedDomain(_TenantListed, Base):
    """A domain whose URLs are refused in a tenant's messages: it and its subdomains."""

    __tablename__ = "blocked_domains"
    __table_args__ = (UniqueConstraint("tenant_id", "domain"),)

    domain: Mapped[str] = mapped_column(String(255))


class Usage(Base):
    """
    What a tenant relayed on one day (UTC).  Not configuration: changing it
    does not increment the store generation.
    """

    __tablename__ = "usage"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    messages_relayed: Mapped[int] = mapped_column(BigInteger, default=0)
    recipients_relayed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_relayed: Mapped[int] = mapped_column(BigInteger, default=0)
    messages_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    messages_failed: Mapped[int] = mapped_column(BigInteger, default=0)


class StoreGeneration(Base):
    """
    The single row (C{id} 1) counting changes: every change made through the
    store increments it in the same transaction, so the relay knows when to
    reload its snapshot.
    """

    __tablename__ = "store_generation"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class Plan(Base):
    """A named set of limits (C{plan add}); a tenant on it has them where it sets none of its own."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    max_size: Mapped[int | None] = mapped_column(BigInteger)
    max_recipients: Mapped[int | None] = mapped_column(Integer)
    rate_count: Mapped[int | None] = mapped_column(Integer)
    rate_seconds: Mapped[int | None] = mapped_column(Integer)
    rate_recipients_count: Mapped[int | None] = mapped_column(Integer)
    rate_recipients_seconds: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)


class Account(Base):
    """
    A person who logs in to the portal: a tenant's user, or an operator (who
    sees every tenant).  E-mail addresses are kept lower case and unique.
    """

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class WebSession(Base):
    """A portal session, known by the SHA-256 of its cookie's value; bound to an account once logged in."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AccountToken(Base):
    """A single-use, expiring token e-mailed to an account (C{verify}, C{reset}), known by its SHA-256."""

    __tablename__ = "account_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token of the API, known by its SHA-256: an operator's (no tenant) or one tenant's."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Activity(Base):
    """
    One recipient's outcome in one transaction: metadata only (never a body
    or a subject), addresses as C{--log-addresses} says.  Kept for the
    tenant's retention, then purged.
    """

    __tablename__ = "activity"
    __table_args__ = (
        Index("ix_activity_tenant_id_at", "tenant_id", "at"),
        Index("ix_activity_tenant_id_queue_id", "tenant_id", "queue_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    queue_id: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    upstream: Mapped[str | None] = mapped_column(Text)
    reply: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(16))
