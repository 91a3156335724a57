"""
What an upstream needs besides its URL to prove who we are: an OAuth 2.0
client (Microsoft 365 and Google Workspace after Basic Auth, SASL
XOAUTH2) and a client certificate (Microsoft 365 certificate-based
connectors).  The store keeps the secrets encrypted and hands them to the
relay decrypted, in L{UpstreamURL.credentials}; nothing here is ever in a
C{repr}, a log line or what operators are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AccessToken", "ClientCertificate", "Credentials", "OAuthClient"]

MAX_MARGIN = 300.0  # seconds before expiry a token is replaced, at most


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """
    An OAuth 2.0 client registration and its grant.

    @ivar tokenUrl: the provider's token endpoint.
    @ivar clientId: the application (client) id.
    @ivar scope: space-separated scopes, or C{None} for the provider's default.
    @ivar clientSecret: the client secret (confidential clients), decrypted.
    @ivar refreshToken: with one, the refresh-token grant (delegated: a user
        consented); without, the client-credentials grant (app-only, such as
        Microsoft's C{SMTP.SendAsApp}).
    @ivar upstreamId: the store's id of the upstream, under which a rotated
        refresh token is stored back.
    """

    tokenUrl: str
    clientId: str
    scope: str | None = None
    clientSecret: str | None = field(default=None, repr=False)
    refreshToken: str | None = field(default=None, repr=False)
    upstreamId: int | None = None

    @property
    def grant(self) -> str:
        """C{"refresh_token"} or C{"client_credentials"}."""
        return "refresh_token" if self.refreshToken is not None else "client_credentials"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """
    A certificate the relay presents in the upstream's TLS handshake.

    @ivar chain: PEM, the certificate first, then its intermediates.
    @ivar key: its PEM private key, decrypted.
    """

    chain: bytes
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything beyond the URL's user and password; either part may be absent."""

    oauth: OAuthClient | None = None
    clientCertificate: ClientCertificate | None = None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token, when it expires (reactor seconds) and how long it was given for."""

    value: str = field(repr=False)
    expiresAt: float
    lifetime: float

    @property
    def renewAt(self) -> float:
        """When it is replaced: in the last fifth of its life, at most 5 minutes before it expires."""
        return self.expiresAt - min(MAX_MARGIN, self.lifetime / 5)
