"""
The tenant credential checker and its memory of verified passwords.
"""

from __future__ import annotations

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin

import relay.auth.logins as tenants
from relay.auth.logins import TenantChecker
from relay.auth.passwords import hashPassword
from relay.core.tenant import Login
from relay.testing import FakeDirectory, InlineThreads

HASH = hashPassword("right")


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


def oldHash(password: str) -> str:
    """A hash made with older, weaker parameters (ln=12)."""
    from relay.auth.passwords import _b64encode, _derive

    salt = b"0123456789abcdef"
    return f"$scrypt$ln=12,r=8,p=1${_b64encode(salt)}${_b64encode(_derive(password, salt, 12, 8, 1, 32))}"


class FakeStore:
    def __init__(self, fail: bool = False):
        self.upgrades = []
        self.fail = fail

    def upgradePasswordHash(self, username, old, new):
        if self.fail:
            raise RuntimeError("database down")
        self.upgrades.append((username, old, new))
        return True


@pytest.mark.parametrize("fail", [False, True])
def test_old_hash_upgraded_on_login(checker, fail):
    """A hash with old parameters is replaced after a successful login; a store failure never fails the login."""
    from relay.auth.passwords import needsRehash, verifyPassword

    store = FakeStore(fail)
    checker.bind(checker.directory, checker.reactor, checker.reactor, store)
    old = oldHash("right")
    checker.directory.logins["alice"] = Login("alice", "acme", old)
    assert check(checker, b"alice", b"right") == "acme"
    if fail:
        assert store.upgrades == []
    else:
        [(username, replaced, new)] = store.upgrades
        assert (username, replaced) == ("alice", old)
        assert verifyPassword("right", new) and not needsRehash(new)


def test_current_hash_left_alone(checker):
    """A hash with the current parameters is not rewritten."""
    store = FakeStore()
    checker.bind(checker.directory, checker.reactor, checker.reactor, store)
    assert check(checker, b"alice", b"right") == "acme"
    assert store.upgrades == []


def test_identical_attempts_at_once_hash_once(checker):
    """Many connections logging in with the same credentials at the same time cost one hash."""

    held = []
    checker.reactor.callInThreadWithCallback = lambda onResult, f, *a: held.append((onResult, f, a))
    attempts = [checker.requestAvatarId(UsernamePassword(b"alice", b"right")) for _ in range(50)]
    assert len(held) == 1
    onResult, f, args = held[0]
    onResult(True, f(*args))
    results = []
    for attempt in attempts:
        attempt.addBoth(results.append)
    assert results == ["acme"] * 50 and checker.calls == ["right"]
