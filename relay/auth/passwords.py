"""
Tenant passwords, stored only as slow salted scrypt hashes (RFC 7914).

An encoded hash carries its own parameters, so that raising the cost later
leaves the stored hashes verifiable::

    $scrypt$ln=15,r=8,p=1$<salt>$<key>

where C{ln} is log2 of the CPU/memory cost N, and salt and key are base64
without padding (as in the PHC string format).  Hashing costs about 0.1 s
and 32 MiB: the server runs these functions on a thread pool, never on the
reactor thread.  They do no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

__all__ = ["generatePassword", "hashPassword", "needsRehash", "verifyPassword"]

LOG2_N = 15
"""log2 of scrypt's cost N: 2**15, the OWASP minimum for interactive logins."""

BLOCK_SIZE = 8
"""scrypt's r: memory per hash is 128 * r * N bytes, 32 MiB here."""

PARALLELISM = 1
"""scrypt's p."""

SALT_BYTES = 16
KEY_BYTES = 32

MAX_MEMORY = 256 * 1024 * 1024
"""Ceiling on the memory one hash may use: parameters beyond it do not verify."""

GENERATED_BYTES = 18
"""Randomness of a generated password: 144 bits, 24 URL-safe characters."""

# Salt and key of at least 16 bytes (22 base64 characters).
_ENCODED = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,3}),p=(\d{1,3})\$([A-Za-z0-9+/]{22,})\$([A-Za-z0-9+/]{22,})")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, log2n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**log2n, r=r, p=p, maxmem=MAX_MEMORY, dklen=length)


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """
    @return: log2 N, r, p, salt and key of an encoded hash.
    @raise ValueError: it is not one.
    """
    match = _ENCODED.fullmatch(encoded) if isinstance(encoded, str) else None
    if match is None:
        raise ValueError("not an scrypt hash")
    try:
        return int(match[1]), int(match[2]), int(match[3]), _b64decode(match[4]), _b64decode(match[5])
    except binascii.Error as e:
        raise ValueError(f"bad base64 in scrypt hash: {e}") from e


def hashPassword(password: str) -> str:
    """
    Hash a password with a fresh random salt and the current parameters.

    @return: the encoded hash, C{$scrypt$ln=15,r=8,p=1$...}.
    """
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, LOG2_N, BLOCK_SIZE, PARALLELISM, KEY_BYTES)
    return f"$scrypt$ln={LOG2_N},r={BLOCK_SIZE},p={PARALLELISM}${_b64encode(salt)}${_b64encode(key)}"


def verifyPassword(password: str, encoded: str) -> bool:
    """
    Check a password against an encoded hash, in constant time.

    @return: C{True} if it matches; C{False} if not, or if C{encoded} is not
        a hash this module can check (malformed, or parameters needing more
        than L{MAX_MEMORY}).  Never raises.
    """
    try:
        log2n, r, p, salt, expected = _parse(encoded)
        actual = _derive(password, salt, log2n, r, p, len(expected))
    except (ValueError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def needsRehash(encoded: str) -> bool:
    """
    Whether a hash should be replaced, after a successful login, by one made
    with the current parameters.

    @return: C{True} when its parameters or key length differ from the
        current ones, or it cannot be parsed.
    """
    try:
        log2n, r, p, _, key = _parse(encoded)
    except ValueError:
        return True
    return (log2n, r, p, len(key)) != (LOG2_N, BLOCK_SIZE, PARALLELISM, KEY_BYTES)


def generatePassword() -> str:
    """A strong random password: 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(GENERATED_BYTES)
