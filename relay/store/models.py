"""
The store's tables, as SQLAlchemy declarative models.

A change here needs a migration in C{relay/store/migrations/versions/};
C{tests/test_store.py} checks that the migrations build exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "Login", "SenderDomain", "StoreGeneration", "Tenant", "UpstreamRecord"]

ACTIVE = "active"
SUSPENDED = "suspended"


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
    """A customer: the owner of logins, upstreams and sender domains."""

    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint(f"status IN ('{ACTIVE}', '{SUSPENDED}')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    company: Mapped[str] = mapped_column(String(255))
    org_id: Mapped[str | None] = mapped_column(String(18))
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

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
    encrypted with the key ring (L{relay.store.secrets.KeyRing}).
    """

    __tablename__ = "upstreams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=10)

    tenant: Mapped[Tenant] = relationship(back_populates="upstreams")


class SenderDomain(Base):
    """A domain a tenant may send from: C{example.com}, or C{*.example.com} for its subdomains."""

    __tablename__ = "sender_domains"
    __table_args__ = (UniqueConstraint("tenant_id", "domain"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255))

    tenant: Mapped[Tenant] = relationship(back_populates="domains")


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
