"""
The portal's people and credentials: accounts (a tenant's users and
operators), their sessions, the single-use tokens e-mailed to them
(verification, password reset) and the API's bearer tokens.

Secrets are kept as hashes only: passwords as SMTP logins' are
(L{relay.auth.passwords}), session identifiers and tokens as SHA-256 (they
are long random values, so a fast hash is enough and lets them be looked
up).  Every method is one transaction and returns plain values; the
methods are blocking and the portal calls them on the store's threads.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from relay.auth import passwords
from relay.core.orgid import normaliseOrgId
from relay.store import inputs
from relay.store.errors import Conflict, Invalid, NotFound
from relay.store.models import Account, AccountToken, ApiToken, Tenant, WebSession
from relay.store.repository import bumpGeneration, rowcount

__all__ = ["AccountInfo", "Accounts", "ApiTokenInfo", "SESSION_LIFETIME", "TokenOwner"]

SESSION_LIFETIME = timedelta(hours=12)
TOKEN_LIFETIMES = {"verify": timedelta(days=2), "reset": timedelta(hours=1)}
MIN_PASSWORD = 12


def digest(secret: str) -> str:
    """How a session identifier or a token is known to the store."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """
    Who is logged in.

    @ivar tenant: the tenant's name, C{None} for an operator.
    @ivar verified: the e-mail address was proven (by its link).
    """

    id: int
    email: str
    name: str
    tenant: str | None
    operator: bool
    verified: bool


@dataclass(frozen=True, slots=True)
class ApiTokenInfo:
    id: int
    name: str
    tenant: str | None
    createdAt: datetime
    lastUsedAt: datetime | None


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Whom a bearer token speaks for: an operator (C{tenant} C{None}) or one tenant."""

    name: str
    tenant: str | None


def _info(account: Account, tenant: str | None) -> AccountInfo:
    return AccountInfo(
        id=account.id,
        email=account.email,
        name=account.name,
        tenant=tenant,
        operator=account.operator,
        verified=account.verified_at is not None,
    )


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-")
    return slug if slug and slug[0].isalnum() else f"t-{slug}".strip("-")


class Accounts:
    """The accounts, sessions and tokens in one store database."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self._engine) as session, session.begin():
            yield session

    # Accounts

    def signUp(
        self, email: str, name: str, company: str, password: str, orgId: str | None, trialDays: int, trialMessages: int
    ) -> tuple[AccountInfo, str]:
        """
        A new tenant on trial and its first account, unverified; the
        verification token to e-mail.  A tenant name is made from the
        company's.

        @raise Conflict: the address has an account already (the caller
            says nothing different to the visitor: no enumeration).
        @raise Invalid: a field is unusable.
        """
        email = inputs.emailAddress(email)
        name = name.strip()
        if not name or len(name) > 255:
            raise Invalid("a name is needed (at most 255 characters)")
        company = inputs.company(company)
        orgId = normaliseOrgId(orgId) if orgId and orgId.strip() else None
        hashed = passwords.hashPassword(_password(password))
        with self._session() as session:
            if session.scalars(select(Account.id).where(Account.email == email)).first() is not None:
                raise Conflict(f"an account for {email} exists")
            base = _slug(company) or "tenant"
            taken = set(session.scalars(select(Tenant.name).where(Tenant.name.like(f"{base}%"))))
            tenantName = next(
                n for n in (base if i == 1 else f"{base}-{i}" for i in range(1, 10_000)) if n not in taken
            )
            tenant = Tenant(
                name=inputs.tenantName(tenantName),
                email=email,
                company=company,
                org_id=orgId,
                trial_ends_at=_now() + timedelta(days=trialDays),
                trial_messages=trialMessages,
            )
            session.add(tenant)
            session.flush()
            account = Account(email=email, name=name, password_hash=hashed, tenant_id=tenant.id)
            session.add(account)
            session.flush()
            token = self._issue(session, account.id, "verify")
            bumpGeneration(session)
            return _info(account, tenant.name), token

    def addMember(self, tenant: str, email: str, name: str, password: str) -> AccountInfo:
        """Another account of an existing tenant, verified (an operator or a colleague vouched for it)."""
        email = inputs.emailAddress(email)
        hashed = passwords.hashPassword(_password(password))
        with self._session() as session:
            owner = session.scalars(select(Tenant).where(Tenant.name == tenant)).first()
            if owner is None:
                raise NotFound(f"unknown tenant {tenant!r}")
            if session.scalars(select(Account.id).where(Account.email == email)).first() is not None:
                raise Conflict(f"an account for {email} exists")
            account = Account(
                email=email, name=name or email, password_hash=hashed, tenant_id=owner.id, verified_at=_now()
            )
            session.add(account)
            session.flush()
            return _info(account, owner.name)

    def addOperator(self, email: str, name: str, password: str) -> AccountInfo:
        """An operator's account (verified: an operator made it).  @raise Conflict: the address is taken."""
        email = inputs.emailAddress(email)
        hashed = passwords.hashPassword(_password(password))
        with self._session() as session:
            if session.scalars(select(Account.id).where(Account.email == email)).first() is not None:
                raise Conflict(f"an account for {email} exists")
            account = Account(email=email, name=name or email, password_hash=hashed, operator=True, verified_at=_now())
            session.add(account)
            session.flush()
            return _info(account, None)

    def authenticate(self, email: str, password: str) -> AccountInfo | None:
        """The account these credentials open, or C{None}; the same work whether or not the address exists."""
        email = email.strip().lower()
        with self._session() as session:
            row = session.execute(
                select(Account, Tenant.name)
                .outerjoin(Tenant, Account.tenant_id == Tenant.id)
                .where(Account.email == email)
            ).first()
            if row is None:
                passwords.verifyPassword(password, _dummyHash())  # as long as a real check
                return None
            account, tenant = row
            if not passwords.verifyPassword(password, account.password_hash):
                return None
            return _info(account, tenant)

    def account(self, accountId: int) -> AccountInfo:
        with self._session() as session:
            row = session.execute(
                select(Account, Tenant.name)
                .outerjoin(Tenant, Account.tenant_id == Tenant.id)
                .where(Account.id == accountId)
            ).first()
            if row is None:
                raise NotFound(f"no account {accountId}")
            return _info(*row)

    def verifyPassword(self, accountId: int, password: str) -> bool:
        with self._session() as session:
            account = session.get(Account, accountId)
            return account is not None and passwords.verifyPassword(password, account.password_hash)

    # Single-use tokens

    def _issue(self, session: Session, accountId: int, purpose: str) -> str:
        token = secrets.token_urlsafe(32)
        session.add(
            AccountToken(
                id=digest(token), account_id=accountId, purpose=purpose, expires_at=_now() + TOKEN_LIFETIMES[purpose]
            )
        )
        return token

    def _spend(self, session: Session, token: str, purpose: str) -> Account:
        record = session.get(AccountToken, digest(token), with_for_update=True)
        if record is None or record.purpose != purpose or record.used_at is not None or record.expires_at < _now():
            raise Invalid("this link is not valid any more (used, expired or mistyped)")
        record.used_at = _now()
        account = session.get(Account, record.account_id)
        assert account is not None
        return account

    def newVerification(self, accountId: int) -> str:
        """Another verification token (the first one was lost)."""
        with self._session() as session:
            return self._issue(session, accountId, "verify")

    def verifyEmail(self, token: str) -> AccountInfo:
        """Spend a verification token: the account's address is proven.  @raise Invalid: not a live token."""
        with self._session() as session:
            account = self._spend(session, token, "verify")
            account.verified_at = account.verified_at or _now()
            tenant = session.get(Tenant, account.tenant_id) if account.tenant_id else None
            return _info(account, tenant.name if tenant else None)

    def startReset(self, email: str) -> tuple[AccountInfo, str] | None:
        """A reset token for the address's account, or C{None} when it has none (say nothing different)."""
        with self._session() as session:
            account = session.scalars(select(Account).where(Account.email == email.strip().lower())).first()
            if account is None:
                return None
            token = self._issue(session, account.id, "reset")
            return _info(account, None), token

    def resetPassword(self, token: str, password: str) -> AccountInfo:
        """Spend a reset token: the new password, every session of the account ended."""
        hashed = passwords.hashPassword(_password(password))
        with self._session() as session:
            account = self._spend(session, token, "reset")
            account.password_hash = hashed
            session.execute(delete(WebSession).where(WebSession.account_id == account.id))
            return _info(account, None)

    # Sessions

    def newSession(self, accountId: int | None = None) -> str:
        """A new session (bound to C{accountId} when given); its identifier, for the cookie."""
        identifier = secrets.token_urlsafe(32)
        with self._session() as session:
            session.add(WebSession(id=digest(identifier), account_id=accountId, expires_at=_now() + SESSION_LIFETIME))
        return identifier

    def sessionAccount(self, identifier: str) -> tuple[bool, int | None]:
        """Whether the session exists (and has not expired), and its account."""
        with self._session() as session:
            record = session.get(WebSession, digest(identifier))
            if record is None or record.expires_at < _now():
                return False, None
            return True, record.account_id

    def endSession(self, identifier: str) -> None:
        with self._session() as session:
            session.execute(delete(WebSession).where(WebSession.id == digest(identifier)))

    def purgeSessions(self) -> int:
        """Drop expired sessions and spent or expired tokens; how many rows went."""
        with self._session() as session:
            now = _now()
            gone = rowcount(session.execute(delete(WebSession).where(WebSession.expires_at < now)))
            gone += rowcount(
                session.execute(
                    delete(AccountToken).where((AccountToken.expires_at < now) | AccountToken.used_at.is_not(None))
                )
            )
            return gone

    # API tokens

    def addApiToken(self, name: str, tenant: str | None) -> tuple[ApiTokenInfo, str]:
        """A bearer token (printed once), for one tenant or, without one, an operator's."""
        if not name.strip():
            raise Invalid("a token needs a name")
        token = "srt_" + secrets.token_urlsafe(32)
        with self._session() as session:
            tenantId = None
            if tenant is not None:
                found = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).first()
                if found is None:
                    raise NotFound(f"unknown tenant {tenant!r}")
                tenantId = found
            record = ApiToken(name=name.strip(), token_hash=digest(token), tenant_id=tenantId)
            session.add(record)
            session.flush()
            return ApiTokenInfo(record.id, record.name, tenant, record.created_at, None), token

    def apiTokens(self, tenant: str | None = None) -> list[ApiTokenInfo]:
        """The tokens of a tenant, or every token (C{None})."""
        with self._session() as session:
            query = select(ApiToken, Tenant.name).outerjoin(Tenant, ApiToken.tenant_id == Tenant.id)
            if tenant is not None:
                query = query.where(Tenant.name == tenant)
            return [
                ApiTokenInfo(t.id, t.name, owner, t.created_at, t.last_used_at)
                for t, owner in session.execute(query.order_by(ApiToken.id))
            ]

    def removeApiToken(self, tokenId: int, tenant: str | None = None) -> None:
        """Revoke a token (only one of C{tenant}'s, when given).  @raise NotFound."""
        with self._session() as session:
            record = session.get(ApiToken, tokenId)
            owner = session.get(Tenant, record.tenant_id) if record is not None and record.tenant_id else None
            if record is None or (tenant is not None and (owner is None or owner.name != tenant)):
                raise NotFound(f"no API token {tokenId}")
            session.delete(record)

    def tokenOwner(self, token: str) -> TokenOwner | None:
        """Whom a presented bearer token speaks for, or C{None}."""
        with self._session() as session:
            row = session.execute(
                select(ApiToken, Tenant.name)
                .outerjoin(Tenant, ApiToken.tenant_id == Tenant.id)
                .where(ApiToken.token_hash == digest(token))
            ).first()
            if row is None:
                return None
            record, tenant = row
            record.last_used_at = _now()
            return TokenOwner(record.name, tenant)


@functools.cache
def _dummyHash() -> str:
    """A hash to check against when there is no account: no answer comes faster for an unknown address."""
    return passwords.hashPassword(secrets.token_urlsafe(16))


def _password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"a password needs {MIN_PASSWORD} characters at least")
    if len(password) > 1024:
        raise Invalid("a password has at most 1024 characters")
    return password
