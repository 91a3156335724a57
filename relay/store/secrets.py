"""
Upstream credentials encrypted at rest with Fernet (AES-128-CBC and
HMAC-SHA256), with keys kept in a file outside the database.

The key file holds one Fernet key per line.  The first line is the primary
key: it encrypts.  Every line decrypts, so rotating means putting a new key
first (L{rotate}), re-encrypting the stored secrets (L{KeyRing.reencrypt}),
then dropping the old lines (L{dropOldKeys}).  A key ring loaded from a
file reads it again when a secret does not decrypt, so a running relay
follows a rotation without a restart.  The file must be readable by its
owner only (mode C{0600}).
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.store.errors import KeyFileError, UndecryptableSecret

__all__ = ["DEFAULT_KEY_FILE", "KeyRing", "dropOldKeys", "rotate"]

DEFAULT_KEY_FILE = "var/secret.key"

_HMAC_LABEL = b"smtprelay: HMAC key for hashing addresses in logs"
_UNDECRYPTABLE = "stored secret cannot be decrypted with any key of the secret key file"


class KeyRing:
    """
    The Fernet keys of a key file: the primary one encrypts, all decrypt.

    @param keys: Fernet keys (32 bytes in URL-safe base64), primary first.
    @param path: the key file they were read from, read again when a secret
        does not decrypt (the file may have been rotated since).
    @raise ValueError: there is no key or one is malformed.
    """

    def __init__(self, keys: Sequence[str], path: Path | None = None):
        self._path = path
        self._keys, self._fernet = self._parse(keys)

    @staticmethod
    def _parse(keys: Sequence[str]) -> tuple[tuple[str, ...], MultiFernet]:
        if not keys:
            raise ValueError("no key")
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except ValueError:
                raise ValueError(f"key {number} is not a Fernet key (32 bytes in URL-safe base64)") from None
        return tuple(keys), MultiFernet(fernets)

    @classmethod
    def fromFile(cls, path: str | os.PathLike[str], create: bool = True) -> KeyRing:
        """
        Load a key file.

        @param create: when the file does not exist, create it (and its
            directory) with one fresh key, mode C{0600}.
        @raise KeyFileError: the file is missing (and C{create} is false),
            cannot be read, is accessible to group or others, or holds no
            valid key.
        """
        path = Path(path)
        if create:
            _createKeyFile(path)
        try:
            return cls(_readKeys(path), path)
        except ValueError as e:
            raise KeyFileError(f"secret key file {path}: {e}") from None

    def encrypt(self, text: str) -> str:
        """Encrypt with the primary key; the token is URL-safe ASCII."""
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """
        Decrypt a token made by L{encrypt} with any key of the ring; when
        none does, with any key of the key file as it is now.

        @raise UndecryptableSecret: no key decrypts it (wrong key file, or the
            token is damaged).
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            if not self._reload():
                raise UndecryptableSecret(_UNDECRYPTABLE) from None
        return self.decrypt(token)

    def _reload(self) -> bool:
        """
        Read the key file again.

        @return: whether it brought keys this ring did not have.
        """
        if self._path is None:
            return False
        try:
            keys, fernet = self._parse(_readKeys(self._path))
        except (KeyFileError, ValueError):
            return False
        if set(keys) <= set(self._keys):
            return False
        self._keys, self._fernet = keys, fernet
        return True

    def reencrypt(self, token: str) -> str:
        """
        Decrypt a token with any key and encrypt it again with the primary
        key (the plain text is the same, the token is new).

        @raise UndecryptableSecret: no key of the ring decrypts it.
        """
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret(_UNDECRYPTABLE) from None

    def hmacKey(self) -> bytes:
        """
        A 32-byte key for keyed hashes (HMAC of addresses in logs), derived
        with HKDF-SHA256 from the primary key: stable for as long as the
        primary key is, and revealing nothing of it.
        """
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HMAC_LABEL)
        return hkdf.derive(base64.urlsafe_b64decode(self._keys[0]))

    def __repr__(self) -> str:
        return f"<KeyRing keys={len(self._keys)}>"


def _readKeys(path: Path) -> list[str]:
    """
    The keys of a key file, one a line.

    @raise KeyFileError: it is missing, cannot be read, or is accessible to
        group or others.
    """
    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise KeyFileError(
                    f"secret key file {path} is accessible to group or others "
                    f"(mode {mode & 0o777:04o}): run chmod 600 {path}"
                )
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise KeyFileError(f"secret key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read secret key file {path}: {e}") from None


def rotate(path: str | os.PathLike[str]) -> KeyRing:
    """
    Put a fresh primary key at the top of an existing key file, keeping the
    others for decryption.  The file is replaced atomically and stays C{0600}.

    @return: the new key ring.
    @raise KeyFileError: as L{KeyRing.fromFile} without C{create}.
    """
    path = Path(path)
    keys = [Fernet.generate_key().decode("ascii"), *KeyRing.fromFile(path, create=False)._keys]
    _replaceKeys(path, keys)
    return KeyRing(keys, path)


def dropOldKeys(path: str | os.PathLike[str]) -> int:
    """
    Keep only the primary key of a key file, replacing it atomically.  Do
    this once no stored secret needs the others (after L{KeyRing.reencrypt}
    of every one), and no other copy of the file is used with older
    secrets.

    @return: how many keys were dropped.
    @raise KeyFileError: as L{KeyRing.fromFile} without C{create}.
    """
    path = Path(path)
    keys = KeyRing.fromFile(path, create=False)._keys
    if len(keys) > 1:
        _replaceKeys(path, keys[:1])
    return len(keys) - 1


def _replaceKeys(path: Path, keys: Sequence[str]) -> None:
    """Replace a key file atomically by one holding these keys, mode C{0600}."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        _writeKeys(fd, keys)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _createKeyFile(path: Path) -> None:
    """Create a key file with one fresh key, unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    _writeKeys(fd, [Fernet.generate_key().decode("ascii")])


def _writeKeys(fd: int, keys: Sequence[str]) -> None:
    """Write keys, one a line, to a file descriptor, durably, and close it."""
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("".join(f"{key}\n" for key in keys))
        f.flush()
        os.fsync(f.fileno())
