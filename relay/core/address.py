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

__all__ = ["AddressError", "Mailbox", "domainAllowed", "parseMailboxList", "parsePath", "parseParameters"]

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
_ADDR_SPEC = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN})")
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


def _splitMailboxes(value: str) -> list[tuple[str, list[str]]]:
    """
    Cut a header value into mailboxes at top-level commas.  Comments are
    dropped; quoted strings are kept whole.  For each mailbox, returns the
    text outside angle brackets and the contents of each C{<...>}.

    @raise AddressError: unbalanced quotes, comments or brackets.
    """
    mailboxes: list[tuple[str, list[str]]] = []
    outside: list[str] = []
    angles: list[str] = []
    angle: list[str] | None = None
    depth = 0
    i = 0
    while i < len(value):
        c = value[i]
        if depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
            i += 2 if c == "\\" else 1
            continue
        if c == '"':
            end = i + 1
            while end < len(value) and value[end] != '"':
                end += 2 if value[end] == "\\" else 1
            if end >= len(value):
                raise AddressError("unbalanced quotes")
            (outside if angle is None else angle).append(value[i : end + 1])
            i = end + 1
            continue
        if c == "(":
            depth = 1
        elif c == "<" and angle is None:
            angle = []
        elif c == ">" and angle is not None:
            angles.append("".join(angle))
            angle = None
        elif c in "<>":
            raise AddressError("misplaced angle bracket")
        elif c == "," and angle is None:
            mailboxes.append(("".join(outside), angles))
            outside, angles = [], []
        else:
            (outside if angle is None else angle).append(c)
        i += 1
    if depth or angle is not None:
        raise AddressError("unbalanced comment or angle bracket")
    mailboxes.append(("".join(outside), angles))
    return mailboxes


# The common forms, decided without the character loop: "a@b" and "Name <a@b>"
# with a display name of plain words (no quotes, comments, commas or @).
_SIMPLE_MAILBOX = re.compile(rf"(?:[A-Za-z0-9 .'_=?+-]*<)?(?P<spec>{_DOT_STRING}@{_DOMAIN})>?")


def parseMailboxList(value: str) -> list[Mailbox]:
    """
    Parse a header's mailbox list (RFC 5322 §3.4), as in C{From:}, strictly:
    each mailbox is an addr-spec or a display name followed by one
    C{<addr-spec>}; an unquoted C{@} in a display name, a source route, a
    group, or anything left over is an error, never a guess.

    @raise AddressError: the value is not such a list.
    """
    simple = _SIMPLE_MAILBOX.fullmatch(value.strip())
    if simple is not None and ("<" in value) == (">" in value):
        local, _, domain = simple.group("spec").rpartition("@")
        return [Mailbox(local, domain)]
    mailboxes = []
    for outside, angles in _splitMailboxes(value):
        if len(angles) > 1:
            raise AddressError("more than one address in a mailbox")
        if angles:
            if "@" in re.sub(_QUOTED, "", outside) or ":" in outside or ";" in outside:
                raise AddressError("invalid display name")
            spec = angles[0].strip()
        else:
            spec = outside.strip()
        m = _ADDR_SPEC.fullmatch(spec)
        if m is None:
            raise AddressError(f"not an address: {spec[:60]!r}")
        mailboxes.append(Mailbox(m.group("local"), m.group("domain")))
    return mailboxes


def domainAllowed(domain: str, allowed: frozenset[str]) -> bool:
    """
    Salesforce's email domain filter: C{example.com} allows exactly that
    domain, C{*.example.com} allows its subdomains (not itself).  Case does
    not matter; address literals never match.
    """
    domain = domain.lower()
    if domain in allowed:
        return True
    labels = domain.split(".")
    return any("*." + ".".join(labels[i:]) in allowed for i in range(1, len(labels)))
