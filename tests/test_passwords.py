"""Tests for L{relay.auth.passwords}."""

from __future__ import annotations

import base64
import re

import pytest

from relay.auth import passwords
from relay.auth.passwords import generatePassword, hashPassword, needsRehash, verifyPassword

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def encoded() -> str:
    """One hash of L{PASSWORD}, shared: each hash costs about 0.1 s."""
    return hashPassword(PASSWORD)


def _unpadded(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def test_hashCarriesParameters(encoded):
    """A hash reads $scrypt$ln=15,r=8,p=1$salt$key with a 16-byte salt and a 32-byte key."""
    match = re.fullmatch(r"\$scrypt\$ln=15,r=8,p=1\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", encoded)
    assert match is not None
    assert (len(_unpadded(match[1])), len(_unpadded(match[2]))) == (16, 32)


def test_verifyCorrect(encoded):
    """The password a hash was made from verifies."""
    assert verifyPassword(PASSWORD, encoded)


@pytest.mark.parametrize("attempt", ["", "correct horse battery stapl", "Correct horse battery staple"])
def test_verifyWrong(encoded, attempt):
    """Any other password does not verify."""
    assert not verifyPassword(attempt, encoded)


def test_saltedHashesDiffer(encoded):
    """Hashing the same password again gives a different hash, which verifies too."""
    again = hashPassword(PASSWORD)
    assert again != encoded
    assert verifyPassword(PASSWORD, again)


def test_unicodePassword():
    """A non-ASCII password verifies (it is hashed as UTF-8)."""
    assert verifyPassword("pässwörd €", hashPassword("pässwörd €"))


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "plain text",
        "$scrypt$",
        "$scrypt$ln=15,r=8,p=1$c2FsdA$",
        "$scrypt$ln=15,r=8,p=1$!!!!!!!!!!!!!!!!!!!!!!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=0,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$scrypt$ln=40,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g",
        None,
    ],
)
def test_verifyMalformed(malformed):
    """A malformed hash, or one needing too much memory, verifies nothing and raises nothing."""
    assert not verifyPassword(PASSWORD, malformed)


def test_oldParametersStillVerify(monkeypatch):
    """A hash made with other parameters verifies, and needs a rehash."""
    monkeypatch.setattr(passwords, "LOG2_N", 10)
    older = hashPassword(PASSWORD)
    monkeypatch.undo()
    assert older.startswith("$scrypt$ln=10,")
    assert verifyPassword(PASSWORD, older)
    assert needsRehash(older)


def test_currentNeedsNoRehash(encoded):
    """A hash made with the current parameters needs no rehash."""
    assert not needsRehash(encoded)


def test_malformedNeedsRehash():
    """A hash that cannot be parsed needs a rehash."""
    assert needsRehash("plain text")


def test_generatedPasswords():
    """Generated passwords are 24 URL-safe characters and never repeat."""
    generated = {generatePassword() for _ in range(100)}
    assert len(generated) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24}", password) for password in generated)
