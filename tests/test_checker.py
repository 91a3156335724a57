"""
The tenant credential checker and its memory of verified passwords.
"""

from __future__ import annotations

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock

import relay.auth.tenants as tenants
from relay.auth.tenants import TenantChecker
from relay.passwords import hashPassword
from relay.tenants import Login
from relay.testing import FakeDirectory

HASH = hashPassword("right")


class InlineThreads(MemoryReactorClock):
    """Runs 'threaded' work at once, so a unit test needs no threads."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        onResult(True, f(*args, **kwargs))


@pytest.fixture
def checker(monkeypatch):
    calls = []
    verify = tenants._verify
    monkeypatch.setattr(tenants, "_verify", lambda *a: calls.append(a[0]) or verify(*a))
    reactor = InlineThreads()
    directory = FakeDirectory(logins={"alice": Login("alice", "acme", HASH)})
    checker = TenantChecker()
    checker.bind(directory, reactor, reactor)
    checker.calls, checker.reactor, checker.directory = calls, reactor, directory
    return checker


def check(checker, username: bytes, password: bytes):
    results = []
    checker.requestAvatarId(UsernamePassword(username, password)).addBoth(results.append)
    return results[0]


def test_right_password_remembered(checker):
    """A verified password is not hashed again for a while; then it is."""
    assert check(checker, b"alice", b"right") == "acme"
    assert check(checker, b"alice", b"right") == "acme"
    assert checker.calls == ["right"]
    checker.reactor.advance(301)
    assert check(checker, b"alice", b"right") == "acme"
    assert checker.calls == ["right", "right"]


def test_wrong_password_always_hashed(checker):
    """Wrong passwords are never served from memory: each one costs a full hash."""
    check(checker, b"alice", b"right")
    for _ in range(3):
        assert check(checker, b"alice", b"wrong").check(UnauthorizedLogin)
    assert checker.calls == ["right", "wrong", "wrong", "wrong"]


def test_unknown_user_costs_a_hash(checker):
    """An unknown user name is checked against a decoy hash, in the same time as a wrong password."""
    assert check(checker, b"mallory", b"right").check(UnauthorizedLogin)
    assert checker.calls == ["right"]


def test_changed_password_forgets(checker):
    """A new stored hash (password changed) is not matched by the old memory."""
    check(checker, b"alice", b"right")
    checker.directory.logins["alice"] = Login("alice", "acme", hashPassword("new"))
    assert check(checker, b"alice", b"right").check(UnauthorizedLogin)


def test_not_utf8(checker):
    """Credentials that are not UTF-8 fail without hashing."""
    assert check(checker, b"alice", b"\xff").check(UnauthorizedLogin)
    assert checker.calls == []
