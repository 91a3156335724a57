"""
Upstream URLs: C{smtp+starttls://user:secret@mail.example.com:587?timeout=30}.

The scheme picks the upstream type; the rest is the type's business.  The
password is kept out of C{repr} and L{UpstreamURL.redacted} so it never lands
in a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from relay.core.credentials import Credentials

__all__ = ["UpstreamURL"]


@dataclass(frozen=True, slots=True)
class UpstreamURL:
    """
    A parsed upstream URL.

    @ivar scheme: lower case, such as C{"smtp"} or C{"maildir"}.
    @ivar host: host name or IP address, C{""} when the URL has none.
    @ivar port: the explicit port or C{None}.
    @ivar path: the path, C{""} when absent.
    @ivar username: decoded user name or C{None}.
    @ivar password: decoded password or C{None}; never shown.
    @ivar options: the query string as a dict (last value wins).
    @ivar credentials: an OAuth client and a client certificate, from the
        store (never part of the URL's text); part of the URL's identity, so
        sessions made with other credentials are never shared.
    @ivar restricted: a tenant entered it (the portal, a tenant's API
        token): its host may not lead to loopback, private, link-local or
        multicast addresses, nor to the relay itself (docs/design.md §9).
    """

    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict, hash=False)
    credentials: Credentials | None = field(default=None, repr=False)
    restricted: bool = False

    @classmethod
    def parse(cls, text: str) -> UpstreamURL:
        """
        Parse a URL.

        @raise ValueError: the text is not a URL with a scheme.
        """
        parts = urlsplit(text.strip())
        if not parts.scheme or not (parts.netloc or parts.path):
            raise ValueError(f"not an upstream URL: {text!r} (expected scheme://...)")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"bad port in {text!r}") from e
        return cls(
            scheme=parts.scheme.lower(),
            host=parts.hostname or "",
            port=port,
            path=unquote(parts.path),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            options=dict(parse_qsl(parts.query, keep_blank_values=True)),
        )

    def withoutPassword(self) -> UpstreamURL:
        """This URL with the password removed (what the store keeps in clear)."""
        return replace(self, password=None)

    def withPassword(self, password: str | None) -> UpstreamURL:
        """This URL with the given password."""
        return replace(self, password=password)

    def withCredentials(self, credentials: Credentials | None) -> UpstreamURL:
        """This URL with an OAuth client and a client certificate."""
        return replace(self, credentials=credentials)

    def asRestricted(self, restricted: bool = True) -> UpstreamURL:
        """This URL as one a tenant entered (see L{restricted})."""
        return replace(self, restricted=restricted)

    def _render(self, password: str | None) -> str:
        netloc = ""
        if self.username is not None:
            netloc = quote(self.username, safe="")
            if password is not None:
                netloc += ":" + password
            netloc += "@"
        if self.host:
            netloc += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            netloc += f":{self.port}"
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in self.options.items())
        return f"{self.scheme}://{netloc}{quote(self.path, safe='/')}" + (f"?{query}" if query else "")

    def redacted(self) -> str:
        """The URL with C{***} in place of a password: safe to log and show."""
        return self._render("***" if self.password is not None else None)

    def unparse(self) -> str:
        """The URL in full, password included."""
        return self._render(quote(self.password, safe="") if self.password is not None else None)

    def option(self, name: str, default: str) -> str:
        """A query option or its default."""
        return self.options.get(name, default)

    def __str__(self) -> str:
        return self.redacted()
