"""
SASL PLAIN and LOGIN for SMTP AUTH (RFC 4954), built on the challengers of
C{twisted.mail}.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode

from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials

__all__ = ["MECHANISMS", "decodeResponse", "encodeChallenge"]


class _LOGINCredentials(LOGINCredentials):
    """LOGIN with the prompts clients expect (draft-murchison-sasl-login)."""

    def __init__(self) -> None:
        super().__init__()
        self.challenges = [b"Password:", b"Username:"]


MECHANISMS = {"PLAIN": PLAINCredentials, "LOGIN": _LOGINCredentials}
"""The mechanisms offered, by name, as C{IChallengeResponse} factories."""


def decodeResponse(text: bytes) -> bytes:
    """
    Decode a client's base64 response; C{=} is the empty response (RFC 4954 §4).

    @raise ValueError: not valid base64.
    """
    if text == b"=":
        return b""
    try:
        return b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError("invalid base64") from e


def encodeChallenge(challenge: bytes) -> str:
    return b64encode(challenge).decode("ascii")
