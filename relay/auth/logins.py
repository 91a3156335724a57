"""
The default credential checker: logins and password hashes from the tenant
store, verified on the store's thread pool, never on the reactor thread.
Select it explicitly with C{--auth tenants}.
"""

from __future__ import annotations

from functools import cache

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from relay.auth.passwords import hashPassword, needsRehash, verifyPassword
from relay.auth.verified import VerifiedCache

__all__ = ["TenantChecker", "TenantCheckerFactory"]

log = Logger()


@cache
def _decoy() -> str:
    """
    A hash verified when the user name is unknown, so that a wrong user name
    costs as much time as a wrong password and does not reveal which logins
    exist.  Made on first use (on the thread pool), not at import.
    """
    return hashPassword("decoy password, never matches")


def _verify(password: str, encoded: str | None) -> bool:
    return verifyPassword(password, encoded if encoded is not None else _decoy())


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@implementer(ICredentialsChecker)
class TenantChecker:
    """
    Checks SMTP AUTH user names and passwords against the logins of the
    relay's tenant directory; fires with the login's tenant name.  A
    successful verification is remembered for a few minutes (see
    L{VerifiedCache}).  The relay calls L{bind} before the first check.
    """

    credentialInterfaces = (IUsernamePassword,)

    def bind(self, directory, reactor, threadPool, store=None) -> None:
        """
        Use this directory, and this thread pool for hashing.

        @param store: where a hash made with old parameters is replaced
            (C{upgradePasswordHash}) after a successful login; C{None} to
            leave hashes alone.
        """
        self._directory = directory
        self._reactor = reactor
        self._pool = threadPool
        self._store = store
        self._verified = VerifiedCache(reactor)
        self._inFlight: dict[bytes, list[Deferred[bool]]] = {}

    # twisted.cred types avatar ids as bytes; smtprelay's are tenant names (RelaySession._tenantFor takes both).
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:  # type: ignore[override]
        try:
            username = _text(credentials.username)
            password = _text(credentials.password)
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin("credentials are not UTF-8"))
        login = self._directory.login(username)
        encoded = None if login is None else login.passwordHash
        digest = self._verified.digest(username, password, encoded or "")
        if login is not None and digest in self._verified:
            return succeed(login.tenant)

        def checked(valid: bool) -> str:
            if login is None or not valid:
                raise UnauthorizedLogin()
            self._verified.add(digest)
            if self._store is not None and needsRehash(login.passwordHash):
                self._upgrade(username, password, login.passwordHash)
            return login.tenant

        return self._verifyOnce(digest, password, encoded).addCallback(checked)

    def _verifyOnce(self, digest: bytes, password: str, encoded: str | None) -> Deferred[bool]:
        """
        Hash once for identical attempts made at the same time (a tenant
        opening many connections at once): the later ones wait for the
        first one's answer instead of hashing again.
        """
        waiter: Deferred[bool] = Deferred()
        waiting = self._inFlight.get(digest)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        waiting = self._inFlight[digest] = [waiter]

        def answer(result) -> None:
            del self._inFlight[digest]
            for each in waiting:
                each.callback(result)

        deferToThreadPool(self._reactor, self._pool, _verify, password, encoded).addBoth(answer)
        return waiter

    def _upgrade(self, username: str, password: str, old: str) -> None:
        """Re-hash with the current parameters, in the background; a failure never fails the login."""

        def upgrade() -> bool:
            return self._store.upgradePasswordHash(username, old, hashPassword(password))

        d = deferToThreadPool(self._reactor, self._pool, upgrade)
        d.addErrback(lambda f: log.failure("password hash of {username} not upgraded", f, username=username))


@implementer(ICheckerFactory, IPlugin)
class TenantCheckerFactory:
    """C{--auth tenants}: the logins of the tenant store (the default)."""

    authType = "tenants"
    authHelp = """Logins and password hashes from the tenant store (--database); the default.

    Takes no argument: --auth tenants
    """
    argStringFormat = "No argstring required."
    credentialInterfaces = TenantChecker.credentialInterfaces

    def generateChecker(self, argstring: str = "") -> TenantChecker:
        return TenantChecker()
