"""
The default credential checker: logins and password hashes from the tenant
store, verified on a thread pool.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from relay.passwords import hashPassword, verifyPassword

__all__ = ["TenantChecker"]

# Verified when the user name is unknown, so that a wrong user name costs as
# much time as a wrong password and does not reveal which logins exist.
_DECOY = hashPassword("decoy password, never matches")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@implementer(ICredentialsChecker)
class TenantChecker:
    """
    Checks SMTP AUTH user names and passwords against the logins in the
    directory's snapshot; fires with the tenant's name.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, directory, reactor, threadPool):
        self._directory = directory
        self._reactor = reactor
        self._pool = threadPool

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        try:
            username = _text(credentials.username)
            password = _text(credentials.password)
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin("credentials are not UTF-8"))
        login = self._directory.login(username)

        def checked(valid: bool) -> str:
            if login is None or not valid:
                raise UnauthorizedLogin()
            return login.tenant

        encoded = _DECOY if login is None else login.passwordHash
        return deferToThreadPool(self._reactor, self._pool, verifyPassword, password, encoded).addCallback(checked)
