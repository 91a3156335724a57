"""
What goes wrong in the store, each with a one-line message an operator can
act on, such as C{unknown tenant 'acme'}.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Invalid",
    "KeyFileError",
    "NotFound",
    "SchemaNotCurrent",
    "StoreError",
    "UndecryptableSecret",
]


class StoreError(Exception):
    """Base class of the store's errors; C{str()} is the one-line reason."""


class NotFound(StoreError):
    """The request names something that does not exist (an unknown tenant)."""


class Conflict(StoreError):
    """The request would duplicate something unique (a tenant name, a login)."""


class Invalid(StoreError):
    """The request carries bad input (a malformed name, URL or org id)."""


class SchemaNotCurrent(StoreError):
    """The database schema is missing or older than this code."""


class KeyFileError(StoreError):
    """The secret key file is missing, unsafe (readable by others) or malformed."""


class UndecryptableSecret(StoreError):
    """A stored secret cannot be decrypted with any key of the key file."""
