"""
Several C{--auth} checkers, asked in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

__all__ = ["FirstOf"]


@implementer(ICredentialsChecker)
class FirstOf:
    """The first checker that accepts the credentials decides; other errors propagate."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Sequence[ICredentialsChecker]):
        self._checkers = tuple(checkers)

    def requestAvatarId(self, credentials) -> Deferred:
        return self._next(iter(self._checkers), credentials)

    def _next(self, checkers, credentials) -> Deferred:
        checker = next(checkers, None)
        if checker is None:
            return fail(UnauthorizedLogin())
        d = checker.requestAvatarId(credentials)
        return d.addErrback(lambda f: f.trap(UnauthorizedLogin) and self._next(checkers, credentials))
