"""
Strict parsing of SMTP envelope paths (RFC 5321 §4.1.2, and RFC 6531 for
SMTPUTF8) and of the ESMTP parameters the relay understands (RFC 3461 DSN).

Everything a relay decides about a message hangs on the envelope addresses,
so they are parsed exactly as the grammar says and nothing else passes: no
bare addresses without angle brackets, no comments, and UTF-8 only in a
transaction that declared SMTPUTF8 (its domains must be valid IDNA).  Forms
an upstream might reinterpret (source routes, quoted local parts) are
parsed, not refused, so that policies can refuse them with a precise reply.
C{<postmaster>} without a domain is a recipient (RFC 5321 §4.5.1).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import idna

__all__ = [
    "AddressError",
    "Mailbox",
    "Recipient",
    "asciiDomain",
    "domainAllowed",
    "parseMailboxList",
    "parseParameters",
    "parsePath",
    "parseRecipient",
]

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3


def _grammar(utf8: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """
    The path and addr-spec patterns, with C{utf8} (a character class body,
    or C{""}) added to atext, qtext and domain labels (RFC 6531 §3.3).
    """
    atom = rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{utf8}]+"
    dotString = rf"{atom}(?:\.{atom})*"
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{utf8}]|\\[\x20-\x7e])*"'
    subDomain = rf"[A-Za-z0-9{utf8}](?:[A-Za-z0-9{utf8}-]*[A-Za-z0-9{utf8}])?"
    domain = rf"{subDomain}(?:\.{subDomain})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    path = re.compile(
        rf"<(?:(?P<route>@{domain}(?:,@{domain})*):)?"
        rf"(?P<local>{dotString}|{quoted})@(?P<domain>{domain}|{literal})>"
    )
    return path, re.compile(rf"(?P<local>{dotString}|{quoted})@(?P<domain>{domain})")


_PATH, _ADDR_SPEC = _grammar("")
_PATH_UTF8, _ADDR_SPEC_UTF8 = _grammar("\u0080-\U0010ffff")
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_POSTMASTER = re.compile(r"<postmaster>", re.I)
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
    def utf8(self) -> bool:
        """The mailbox has non-ASCII characters (it needs SMTPUTF8)."""
        return not (self.local.isascii() and self.domain.isascii())

    @property
    def quoted(self) -> bool:
        """The local part is a quoted string."""
        return self.local.startswith('"')

    @property
    def isLiteral(self) -> bool:
        """The domain is an address literal such as C{[192.0.2.1]}."""
        return self.domain.startswith("[")

    def __str__(self) -> str:
        """The mailbox as it goes on the wire, without any source route (C{postmaster} has no domain)."""
        return f"{self.local}@{self.domain}" if self.domain else self.local


@dataclass(frozen=True, slots=True)
class Recipient(Mailbox):
    """
    A forward-path with the parameters of its RCPT command (C{NOTIFY},
    C{ORCPT}): a L{Mailbox} to every policy that only looks at addresses.
    """

    parameters: Mapping[str, str | None] = field(default_factory=dict, compare=False, hash=False)


def asciiDomain(domain: str) -> str:
    """
    A domain in its ASCII form (U-labels to A-labels, IDNA 2008 with UTS #46
    mapping), lower case; address literals and ASCII domains as they are.

    @raise AddressError: a non-ASCII domain that is not valid IDNA.
    """
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise AddressError(f"invalid internationalised domain: {e}") from None


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


def parsePath(text: str, allowNull: bool, utf8: bool = False) -> Mailbox | None:
    """
    Parse a reverse-path or forward-path such as C{<a@example.com>}.

    @param allowNull: accept C{<>} (the null reverse-path) and return C{None}.
    @param utf8: the transaction declared SMTPUTF8: UTF-8 is allowed in the
        local part and as U-labels in the domain.
    @raise AddressError: the path is not valid.
    """
    if text == "<>":
        if allowNull:
            return None
        raise AddressError("null address not allowed here")
    if len(text.encode("utf-8")) > MAX_PATH + 2:
        raise AddressError("path too long")
    m = (_PATH_UTF8 if utf8 else _PATH).fullmatch(text)
    if m is None:
        raise AddressError("syntax error in mailbox")
    local, domain = m.group("local"), m.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        _checkLiteral(domain)
    else:
        asciiDomain(domain)
    return Mailbox(local, domain, m.group("route"))


def parseRecipient(text: str, parameters: Mapping[str, str | None], utf8: bool = False) -> Recipient:
    """
    Parse a forward-path (C{<postmaster>} without a domain included) with
    the parameters of its RCPT command.

    @raise AddressError: the path is not valid.
    """
    if _POSTMASTER.fullmatch(text):
        return Recipient(text[1:-1], "", None, parameters)
    mailbox = parsePath(text, allowNull=False, utf8=utf8)
    assert mailbox is not None
    return Recipient(mailbox.local, mailbox.domain, mailbox.route, parameters)


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
_SIMPLE_MAILBOX = re.compile(
    r"(?:[A-Za-z0-9 .'_=?+-]*<)?(?P<spec>[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>?"
)


def parseMailboxList(value: str, utf8: bool = False) -> list[Mailbox]:
    """
    Parse a header's mailbox list (RFC 5322 §3.4), as in C{From:}, strictly:
    each mailbox is an addr-spec or a display name followed by one
    C{<addr-spec>}; an unquoted C{@} in a display name, a source route, a
    group, or anything left over is an error, never a guess.

    @raise AddressError: the value is not such a list.
    """
    addrSpec = _ADDR_SPEC_UTF8 if utf8 else _ADDR_SPEC
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
        m = addrSpec.fullmatch(spec)
        if m is None:
            raise AddressError(f"not an address: {spec[:60]!r}")
        mailboxes.append(Mailbox(m.group("local"), m.group("domain")))
    return mailboxes


def domainAllowed(domain: str, allowed: frozenset[str]) -> bool:
    """
    Salesforce's email domain filter: C{example.com} allows exactly that
    domain, C{*.example.com} allows its subdomains (not itself).  Case does
    not matter, an internationalised domain is compared in its ASCII form
    (the form the store keeps); address literals never match.
    """
    try:
        domain = asciiDomain(domain)
    except AddressError:
        return False
    if domain in allowed:
        return True
    labels = domain.split(".")
    return any("*." + ".".join(labels[i:]) in allowed for i in range(1, len(labels)))
