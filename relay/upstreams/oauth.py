"""
OAuth 2.0 access tokens for upstreams that take SASL XOAUTH2 (Microsoft
365, Google Workspace): the grants, the per-process cache, and the
provider presets.

    tokens = AccessTokens(reactor, refreshTokens=store)
    token = await tokens.token(url.credentials.oauth)   # AccessToken
    # AUTH XOAUTH2 base64("user=" U "\\x01auth=Bearer " token.value "\\x01\\x01")

The grant logic (request bodies, token responses, error responses) is
oauthlib's; the HTTP is treq's.  L{AccessTokens}:

 - caches one token per upstream registration and hands it out until it is
   close to expiring (the last fifth of its life, at most 5 minutes), then
   fetches the next one; callers that ask meanwhile share that one request;
 - falls back to the cached token while it is still valid if the refresh
   fails, so no message waits on an endpoint that is down when it need not;
 - stores a rotated refresh token back (L{IRefreshTokens}), and when the
   provider refuses ours as invalid (another worker rotated it first),
   reads the stored one and tries once more with it;
 - says why it failed in a L{TokenError}: C{unavailable} (the endpoint is
   down, times out or answers 5xx: C{451 4.4.1}) or C{refused} (an OAuth
   error response such as C{invalid_client}: C{454 4.7.0}), with the
   provider's error code and description, never a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import treq
from oauthlib.oauth2 import BackendApplicationClient, Client, OAuth2Error, WebApplicationClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementer

from relay.core.credentials import AccessToken, OAuthClient
from relay.seams.interfaces import IAccessTokens
from relay.seams.types import IRelayReactor
from relay.seams.upstream import TokenError

__all__ = [
    "AccessTokens",
    "IRefreshTokens",
    "Post",
    "Provider",
    "StoredRefreshTokens",
    "provider",
    "requestTokens",
    "treqPost",
]


class RefreshTokenStore(Protocol):
    """The store's side of L{StoredRefreshTokens} (L{relay.store.repository.Store} has it)."""

    def loadRefreshToken(self, upstreamId: int) -> str | None: ...

    def rotateRefreshToken(self, upstreamId: int, old: str, new: str) -> bool: ...


class IRefreshTokens(Interface):
    """Where rotated refresh tokens are kept (the store)."""

    def load(upstreamId: int) -> Deferred[str | None]:
        """The refresh token stored for this upstream now."""

    def save(upstreamId: int, old: str, new: str) -> Deferred[bool]:
        """Replace C{old} by C{new}; C{False} (nothing changed) when C{old} is no longer the one stored."""


@implementer(IRefreshTokens)
class StoredRefreshTokens:
    """Rotated refresh tokens in the tenant store, read and written on the store's threads."""

    def __init__(self, store: RefreshTokenStore, reactor: IRelayReactor, threadPool: ThreadPool):
        self._store, self._reactor, self._threadPool = store, reactor, threadPool

    def load(self, upstreamId: int) -> Deferred[str | None]:
        return deferToThreadPool(self._reactor, self._threadPool, self._store.loadRefreshToken, upstreamId)

    def save(self, upstreamId: int, old: str, new: str) -> Deferred[bool]:
        return deferToThreadPool(self._reactor, self._threadPool, self._store.rotateRefreshToken, upstreamId, old, new)


@dataclass(frozen=True, slots=True)
class Provider:
    """
    A provider preset (C{--oauth-provider}).

    @ivar appScope: the scope of the client-credentials grant (app-only).
    @ivar userScope: the scope of a user's consent (refresh-token grant).
    """

    name: str
    tokenUrl: str
    authorizeUrl: str
    deviceUrl: str | None
    appScope: str | None
    userScope: str


def provider(preset: str) -> Provider:
    """
    C{microsoft:TENANT_ID} (Entra ID, Exchange Online) or C{google}.

    @raise ValueError: an unknown preset or a missing tenant id.
    """
    name, _, tenant = preset.partition(":")
    if name == "microsoft":
        if not tenant or "/" in tenant:
            raise ValueError("--oauth-provider microsoft:TENANT_ID (the directory id or a verified domain)")
        base = f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
        return Provider(
            name=preset,
            tokenUrl=f"{base}/token",
            authorizeUrl=f"{base}/authorize",
            deviceUrl=f"{base}/devicecode",
            appScope="https://outlook.office365.com/.default",
            userScope="https://outlook.office365.com/SMTP.Send offline_access",
        )
    if name == "google" and not tenant:
        return Provider(
            name="google",
            tokenUrl="https://oauth2.googleapis.com/token",
            authorizeUrl="https://accounts.google.com/o/oauth2/v2/auth",
            deviceUrl=None,  # Google's device flow does not grant the mail scope
            appScope=None,  # service accounts sign JWTs instead: not a client-credentials grant
            userScope="https://mail.google.com/",
        )
    raise ValueError(f"unknown OAuth provider {preset!r} (microsoft:TENANT_ID or google)")


Post = Callable[[str, bytes], Deferred[tuple[int, bytes]]]


def treqPost(reactor: IRelayReactor, timeout: float) -> Post:
    """POST a form with treq, certificates verified; C{(status, body)}."""
    client = treq.client.HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS()))
    headers = Headers({"Content-Type": ["application/x-www-form-urlencoded"], "Accept": ["application/json"]})

    async def post(url: str, body: bytes) -> tuple[int, bytes]:
        response = await client.post(url, data=body, headers=headers, reactor=cast(Any, reactor), timeout=timeout)
        return response.code, await response.content()

    return lambda url, body: Deferred.fromCoroutine(post(url, body))


async def requestTokens(post: Post, tokenUrl: str, body: str, oauth: Client) -> dict[str, Any]:
    """
    POST a token request (C{body}, made by C{oauth}) and parse the answer
    with oauthlib: the token response, or L{TokenError} (C{unavailable}:
    unreachable, timed out, 5xx; C{refused}: an OAuth error response, with
    the provider's code and description).
    """
    try:
        status, content = await post(tokenUrl, body.encode("ascii"))
    except Exception as e:  # unreachable, TLS, timeout (treq cancels)
        raise TokenError("unavailable", f"{type(e).__name__}: {e}".rstrip(": ")) from None
    if status >= 500:
        raise TokenError("unavailable", f"HTTP {status}")
    try:
        return dict(oauth.parse_request_body_response(content.decode("utf-8", "replace"), scope=None))
    except OAuth2Error as e:
        description = f": {e.description}" if e.description else ""
        raise TokenError("refused", f"HTTP {status} {e.error}{description}", e.error) from None


@dataclass
class _Entry:
    refreshToken: str | None  # the current one (rotated ones replace it)
    seed: str | None  # the one the store gave when this entry was made
    token: AccessToken | None = None
    waiting: list[Deferred[AccessToken]] = field(default_factory=list)


@implementer(IAccessTokens)
class AccessTokens:
    """
    The access tokens of one relay process.

    @param post: how a form is POSTed (L{treqPost} by default).
    @param refreshTokens: where rotated refresh tokens go; C{None}: kept
        in memory only.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IRelayReactor,
        post: Post | None = None,
        refreshTokens: IRefreshTokens | None = None,
        timeout: float = 30.0,
    ):
        self._reactor = reactor
        self._post = post or treqPost(reactor, timeout)
        self._refreshTokens = refreshTokens
        self._entries: dict[tuple[Any, ...], _Entry] = {}

    def token(self, client: OAuthClient) -> Deferred[AccessToken]:
        entry = self._entry(client)
        now = self._reactor.seconds()
        if entry.token is not None and now < entry.token.renewAt:
            return succeed(entry.token)
        waiter: Deferred[AccessToken] = Deferred()
        entry.waiting.append(waiter)
        if len(entry.waiting) == 1:
            Deferred.fromCoroutine(self._renew(client, entry)).addBoth(self._deliver, entry)
        return waiter

    def _entry(self, client: OAuthClient) -> _Entry:
        secret = hashlib.sha256((client.clientSecret or "").encode()).hexdigest()
        key = (client.tokenUrl, client.clientId, client.scope, client.upstreamId, client.grant, secret)
        entry = self._entries.get(key)
        if entry is None or client.refreshToken not in (entry.seed, entry.refreshToken):
            entry = self._entries[key] = _Entry(client.refreshToken, client.refreshToken)  # new, or a new consent
        return entry

    def _deliver(self, result, entry: _Entry) -> None:
        waiting, entry.waiting = entry.waiting, []
        for waiter in waiting:
            waiter.callback(result) if isinstance(result, AccessToken) else waiter.errback(result)

    async def _renew(self, client: OAuthClient, entry: _Entry) -> AccessToken:
        try:
            token = await self._fetch(client, entry, retried=False)
        except TokenError as e:
            old = entry.token
            if old is not None and self._reactor.seconds() < old.expiresAt - 1:
                self.log.warn(
                    "OAuth token refresh at {url} failed ({error}); the current token is still valid",
                    url=client.tokenUrl,
                    error=str(e),
                )
                return old
            self.log.error("OAuth token from {url} for client {client}: {error}", url=client.tokenUrl,
                           client=client.clientId, error=str(e))  # fmt: skip
            raise
        entry.token = token
        return token

    async def _fetch(self, client: OAuthClient, entry: _Entry, retried: bool) -> AccessToken:
        oauth: WebApplicationClient | BackendApplicationClient
        if entry.refreshToken is not None:
            oauth = WebApplicationClient(client.clientId)
            body = oauth.prepare_refresh_body(
                refresh_token=entry.refreshToken,
                scope=client.scope,
                client_id=client.clientId,
                **({"client_secret": client.clientSecret} if client.clientSecret else {}),
            )
        elif client.clientSecret is None:
            raise TokenError("refused", "no consent yet: run smtprelay-admin upstream oauth-consent for this upstream")
        else:
            oauth = BackendApplicationClient(client.clientId)
            body = oauth.prepare_request_body(
                scope=client.scope, include_client_id=True, client_secret=client.clientSecret
            )
        try:
            response = await requestTokens(self._post, client.tokenUrl, body, oauth)
        except TokenError as e:
            if e.error == "invalid_grant" and entry.refreshToken is not None and not retried:
                stored = await self._storedToken(client)
                if stored is not None and stored != entry.refreshToken:  # rotated meanwhile, elsewhere
                    entry.refreshToken = stored
                    return await self._fetch(client, entry, retried=True)
            raise
        rotated = response.get("refresh_token")
        if rotated and entry.refreshToken is not None and rotated != entry.refreshToken:
            old, entry.refreshToken = entry.refreshToken, rotated
            await self._store(client, old, rotated)
        lifetime = float(response.get("expires_in") or 3600)
        return AccessToken(response["access_token"], self._reactor.seconds() + lifetime, lifetime)

    async def _storedToken(self, client: OAuthClient) -> str | None:
        if self._refreshTokens is None or client.upstreamId is None:
            return None
        return await self._refreshTokens.load(client.upstreamId)

    async def _store(self, client: OAuthClient, old: str, new: str) -> None:
        if self._refreshTokens is None or client.upstreamId is None:
            return
        try:
            await self._refreshTokens.save(client.upstreamId, old, new)
        except Exception:  # the token in memory still works; the next rotation stores again
            self.log.failure("cannot store the rotated refresh token of upstream #{id}", id=client.upstreamId)
