"""
Strict parsing of SMTP envelope paths (RFC 5321 §4.1.2).

Everything a relay decides about a message hangs on the envelope addresses,
so they are parsed exactly as the grammar says and nothing else passes: no
bare addresses without angle brackets, no comments, no 8-bit bytes (SMTPUTF8
is not offered).  Forms an upstream might reinterpret (source routes, quoted
local parts) are parsed, not refused, so that policies can refuse them with a
precise reply.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AddressError", "Mailbox", "parsePath", "parseParameters"]

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3

_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_PATH = re.compile(
    rf"<(?:(?P<route>@{_DOMAIN}(?:,@{_DOMAIN})*):)?"
    rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})>"
)
_PARAM = re.compile(r"^(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?$")


class AddressError(ValueError):
    """The text is not a valid envelope path; the message says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """
    An envelope mailbox, exactly as the client wrote it.

    @ivar local: the local part, with quotes and escapes as written.
    @ivar domain: the domain or address literal (C{"[192.0.2.1]"}), as written.
    @ivar route: the obsolete source route (C{"@a,@b"}) or C{None}.
    """

    local: str
    domain: str
    route: str | None = None

    @property
    def quoted(self) -> bool:
        """The local part is a quoted string."""
        return self.local.startswith('"')

    @property
    def isLiteral(self) -> bool:
        """The domain is an address literal such as C{[192.0.2.1]}."""
        return self.domain.startswith("[")

    def __str__(self) -> str:
        """The mailbox as it goes on the wire, without any source route."""
        return f"{self.local}@{self.domain}"


def _checkLiteral(literal: str) -> None:
    inner = literal[1:-1]
    tag, colon, rest = inner.partition(":")
    try:
        if not colon:
            ipaddress.IPv4Address(inner)
        elif tag.upper() == "IPV6":
            ipaddress.IPv6Address(rest)
        else:
            raise AddressError(f"unsupported address literal {literal}")
    except ValueError as e:
        raise AddressError(f"invalid address literal {literal}") from e


def parsePath(text: str, allowNull: bool) -> Mailbox | None:
    """
    Parse a reverse-path or forward-path such as C{<a@example.com>}.

    @param allowNull: accept C{<>} (the null reverse-path) and return C{None}.
    @raise AddressError: the path is not valid.
    """
    if text == "<>":
        if allowNull:
            return None
        raise AddressError("null address not allowed here")
    if len(text) > MAX_PATH + 2:
        raise AddressError("path too long")
    m = _PATH.fullmatch(text)
    if m is None:
        raise AddressError("syntax error in mailbox")
    local, domain = m.group("local"), m.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        _checkLiteral(domain)
    return Mailbox(local, domain, m.group("route"))


def parseParameters(text: str) -> dict[str, str | None]:
    """
    Parse ESMTP parameters (C{SIZE=123 BODY=8BITMIME}) into a dict keyed by
    upper-case keyword.

    @raise AddressError: a parameter is malformed or repeated.
    """
    params: dict[str, str | None] = {}
    for word in text.split():
        m = _PARAM.match(word)
        if m is None:
            raise AddressError(f"malformed parameter {word[:30]}")
        key = m.group("key").upper()
        if key in params:
            raise AddressError(f"repeated parameter {key}")
        params[key] = m.group("value")
    return params
