"""
Upstream credentials encrypted at rest with Fernet (AES-128-CBC and
HMAC-SHA256), with keys kept in a file outside the database.

The key file holds one Fernet key per line.  The first line is the primary
key: it encrypts.  Every line decrypts, so rotating means putting a new key
first (L{rotate}), re-encrypting the stored secrets, then dropping the old
line.  The file must be readable by its owner only (mode C{0600}).
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

__all__ = ["DEFAULT_KEY_FILE", "KeyRing", "rotate"]

DEFAULT_KEY_FILE = "var/secret.key"

_HMAC_LABEL = b"smtprelay: HMAC key for hashing addresses in logs"


class KeyRing:
    """
    The Fernet keys of a key file: the primary one encrypts, all decrypt.

    @param keys: Fernet keys (32 bytes in URL-safe base64), primary first.
    @raise ValueError: there is no key or one is malformed.
    """

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("no key")
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except ValueError:
                raise ValueError(f"key {number} is not a Fernet key (32 bytes in URL-safe base64)") from None
        self._keys = tuple(keys)
        self._fernet = MultiFernet(fernets)

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
            with open(path, encoding="ascii") as f:
                mode = os.fstat(f.fileno()).st_mode
                if mode & 0o077:
                    raise KeyFileError(
                        f"secret key file {path} is accessible to group or others "
                        f"(mode {mode & 0o777:04o}): run chmod 600 {path}"
                    )
                keys = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            raise KeyFileError(f"secret key file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"cannot read secret key file {path}: {e}") from None
        try:
            return cls(keys)
        except ValueError as e:
            raise KeyFileError(f"secret key file {path}: {e}") from None

    def encrypt(self, text: str) -> str:
        """Encrypt with the primary key; the token is URL-safe ASCII."""
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """
        Decrypt a token made by L{encrypt} with any key of the ring.

        @raise UndecryptableSecret: no key decrypts it (wrong key file, or the
            token is damaged).
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret("stored secret cannot be decrypted with any key of the secret key file") from None

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


def rotate(path: str | os.PathLike[str]) -> KeyRing:
    """
    Put a fresh primary key at the top of an existing key file, keeping the
    others for decryption.  The file is replaced atomically and stays C{0600}.

    @return: the new key ring.
    @raise KeyFileError: as L{KeyRing.fromFile} without C{create}.
    """
    path = Path(path)
    keys = [Fernet.generate_key().decode("ascii"), *KeyRing.fromFile(path, create=False)._keys]
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        _writeKeys(fd, keys)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return KeyRing(keys)


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
