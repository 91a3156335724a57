"""Tests for L{relay.store.secrets}."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from cryptography.fernet import Fernet

from relay.store.errors import KeyFileError, UndecryptableSecret
from relay.store.secrets import KeyRing, dropOldKeys, rotate

SECRET = "upstream p@ssw0rd"


@pytest.fixture
def keyFile(tmp_path):
    """Where a key file goes, in directories that do not exist yet."""
    return tmp_path / "etc" / "smtprelay" / "secret.key"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_createdOwnerOnly(keyFile):
    """A missing key file is created, with its directories, mode 0600, holding one Fernet key."""
    previous = os.umask(0)
    try:
        KeyRing.fromFile(keyFile)
    finally:
        os.umask(previous)
    assert _mode(keyFile) == 0o600
    [key] = keyFile.read_text().split()
    Fernet(key)


def test_notCreated(keyFile):
    """With create=False a missing key file is an error naming it."""
    with pytest.raises(KeyFileError, match="does not exist"):
        KeyRing.fromFile(keyFile, create=False)
    assert not keyFile.exists()


def test_roundTrip(keyFile):
    """A secret encrypted with a key file decrypts with the same file loaded again."""
    token = KeyRing.fromFile(keyFile).encrypt(SECRET)
    assert SECRET not in token
    assert KeyRing.fromFile(keyFile, create=False).decrypt(token) == SECRET


def test_encryptionIsRandomised(keyFile):
    """Encrypting the same secret twice gives different tokens."""
    ring = KeyRing.fromFile(keyFile)
    assert ring.encrypt(SECRET) != ring.encrypt(SECRET)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_refusesShared(keyFile, mode):
    """A key file accessible to group or others is refused, saying how to fix it."""
    KeyRing.fromFile(keyFile)
    keyFile.chmod(mode)
    with pytest.raises(KeyFileError, match=f"accessible to group or others .mode 0{mode:o}.: run chmod 600"):
        KeyRing.fromFile(keyFile)


@pytest.mark.parametrize("content", ["", "\n\n", "not-a-key\n", f"{Fernet.generate_key().decode()}\nshort\n"])
def test_malformedFile(keyFile, content):
    """A key file without keys, or with a line that is not a Fernet key, is refused."""
    keyFile.parent.mkdir(parents=True)
    keyFile.write_text(content)
    keyFile.chmod(0o600)
    with pytest.raises(KeyFileError, match="secret key file"):
        KeyRing.fromFile(keyFile)


@pytest.mark.parametrize("token", ["garbage", "", Fernet(Fernet.generate_key()).encrypt(b"x").decode(), "é"])
def test_undecryptable(keyFile, token):
    """A token made with another key, or damaged, raises UndecryptableSecret."""
    with pytest.raises(UndecryptableSecret, match="cannot be decrypted"):
        KeyRing.fromFile(keyFile).decrypt(token)


def test_rotate(keyFile):
    """Rotation puts a new primary key first: old secrets still decrypt, new ones need the new key."""
    old = KeyRing.fromFile(keyFile)
    oldToken = old.encrypt(SECRET)
    rotated = rotate(keyFile)
    assert _mode(keyFile) == 0o600
    assert len(keyFile.read_text().split()) == 2
    reloaded = KeyRing.fromFile(keyFile, create=False)
    assert reloaded.decrypt(oldToken) == SECRET
    newToken = rotated.encrypt(SECRET)
    assert reloaded.decrypt(newToken) == SECRET
    with pytest.raises(UndecryptableSecret):
        KeyRing(keyFile.read_text().split()[1:]).decrypt(newToken)
    assert [path.name for path in keyFile.parent.iterdir()] == [keyFile.name]


def test_followsRotation(keyFile):
    """A key ring loaded from a file reads it again for a token it cannot decrypt: it follows a rotation."""
    running = KeyRing.fromFile(keyFile)
    newToken = rotate(keyFile).encrypt(SECRET)
    assert running.decrypt(newToken) == SECRET
    assert repr(running) == "<KeyRing keys=2>"


def test_rereadKeepsKeysWhenFileBroken(keyFile):
    """When the file cannot be read again, the ring keeps its keys and the token stays undecryptable."""
    running = KeyRing.fromFile(keyFile)
    token = running.encrypt(SECRET)
    keyFile.chmod(0o644)
    with pytest.raises(UndecryptableSecret):
        running.decrypt(Fernet(Fernet.generate_key()).encrypt(b"x").decode())
    assert running.decrypt(token) == SECRET


def test_reencrypt(keyFile):
    """reencrypt gives a new token of the primary key for a token of any key of the ring."""
    oldToken = KeyRing.fromFile(keyFile).encrypt(SECRET)
    rotated = rotate(keyFile)
    newToken = rotated.reencrypt(oldToken)
    assert newToken != oldToken
    assert KeyRing(keyFile.read_text().split()[:1]).decrypt(newToken) == SECRET
    with pytest.raises(UndecryptableSecret, match="cannot be decrypted"):
        rotated.reencrypt("garbage")


def test_dropOldKeys(keyFile):
    """dropOldKeys keeps the primary key only, mode 0600, and says how many it dropped."""
    KeyRing.fromFile(keyFile)
    rotate(keyFile)
    rotate(keyFile)
    primary = keyFile.read_text().split()[0]
    assert dropOldKeys(keyFile) == 2
    assert (keyFile.read_text(), _mode(keyFile)) == (f"{primary}\n", 0o600)
    assert dropOldKeys(keyFile) == 0


def test_rotateMissing(keyFile):
    """Rotating a key file that does not exist fails and creates nothing."""
    keyFile.parent.mkdir(parents=True)
    with pytest.raises(KeyFileError, match="does not exist"):
        rotate(keyFile)
    assert list(keyFile.parent.iterdir()) == []


def test_hmacKey(keyFile, tmp_path):
    """The HMAC key is 32 bytes, stable for a key file, distinct between key files, and not the key itself."""
    key = KeyRing.fromFile(keyFile).hmacKey()
    assert len(key) == 32
    assert KeyRing.fromFile(keyFile).hmacKey() == key
    assert KeyRing.fromFile(tmp_path / "other.key").hmacKey() != key
    assert key != base64.urlsafe_b64decode(keyFile.read_text().strip())


def test_reprHidesKeys(keyFile):
    """The repr of a key ring shows no key."""
    ring = KeyRing.fromFile(keyFile)
    assert keyFile.read_text().strip() not in repr(ring)
    assert repr(ring) == "<KeyRing keys=1>"
