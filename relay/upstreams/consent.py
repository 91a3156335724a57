"""
A user's consent for an OAuth upstream (the refresh-token grant): the
first refresh token needs a browser.  Two ways, each as plain steps a
caller drives, so that C{smtprelay-admin upstream oauth-consent} and the
portal's "connect Microsoft 365 / Google" share them:

 - B{authorization code with PKCE} (RFC 6749 §4.1, RFC 7636, RFC 8252's
   loopback redirect for the command line; the portal's own callback URL):
   L{authorization} gives the URL to open and what to keep;
   L{exchangeCode} turns the code the browser brings back into tokens.
 - B{device code} (RFC 8628, Microsoft only: Google's device flow does not
   grant the mail scope): L{startDevice} gives the code the user types in
   at the provider's page; L{pollDevice} waits for the consent.

The request bodies and the parsing of responses are oauthlib's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

from oauthlib.oauth2 import DeviceClient, WebApplicationClient
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relay.seams.types import IRelayReactor
from relay.seams.upstream import TokenError
from relay.upstreams.oauth import Post, requestTokens

__all__ = [
    "Authorization",
    "ConsentClient",
    "DeviceAuthorization",
    "authorization",
    "exchangeCode",
    "pollDevice",
    "startDevice",
]


@dataclass(frozen=True, slots=True)
class ConsentClient:
    """What a consent needs: the client, the scope asked for, and the provider's endpoints."""

    clientId: str
    tokenUrl: str
    authorizeUrl: str | None
    deviceUrl: str | None
    scope: str
    clientSecret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Authorization:
    """
    @ivar url: where the user's browser goes.
    @ivar state: to check against the redirect's (CSRF).
    @ivar verifier: the PKCE code verifier, kept for L{exchangeCode}.
    """

    url: str
    state: str
    verifier: str = field(repr=False)
    redirectUri: str


def authorization(client: ConsentClient, redirectUri: str) -> Authorization:
    """The authorization request for a browser, with a fresh state and PKCE S256 challenge."""
    if client.authorizeUrl is None:
        raise ValueError("no authorization URL for this OAuth client (use --authorize-url or a provider preset)")
    oauth = WebApplicationClient(client.clientId)
    verifier = oauth.create_code_verifier(64)
    state = secrets.token_urlsafe(16)
    url = oauth.prepare_request_uri(
        client.authorizeUrl,
        redirect_uri=redirectUri,
        scope=client.scope.split(),
        state=state,
        code_challenge=oauth.create_code_challenge(verifier, "S256"),
        code_challenge_method="S256",
        prompt="consent",
        access_type="offline",  # Google's way of asking for a refresh token
    )
    return Authorization(url=url, state=state, verifier=verifier, redirectUri=redirectUri)


def exchangeCode(post: Post, client: ConsentClient, authorized: Authorization, code: str) -> Deferred[str]:
    """The refresh token the authorization code brings (fails with L{TokenError})."""
    oauth = WebApplicationClient(client.clientId)
    body = oauth.prepare_request_body(
        code=code,
        redirect_uri=authorized.redirectUri,
        include_client_id=True,
        code_verifier=authorized.verifier,
        **({"client_secret": client.clientSecret} if client.clientSecret else {}),
    )

    async def exchange() -> str:
        tokens = await requestTokens(post, client.tokenUrl, body, oauth)
        if not tokens.get("refresh_token"):
            raise TokenError("refused", "the provider gave no refresh token (ask for offline access)")
        return tokens["refresh_token"]

    return Deferred.fromCoroutine(exchange())


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """What the user is shown (L{message}) and what L{pollDevice} needs."""

    userCode: str
    verificationUri: str
    message: str
    interval: float
    expiresIn: float
    deviceCode: str = field(repr=False)


def startDevice(post: Post, client: ConsentClient) -> Deferred[DeviceAuthorization]:
    """Ask the provider for a device code (fails with L{TokenError})."""
    if client.deviceUrl is None:
        raise ValueError("no device authorization URL for this OAuth client (use --device-url or the microsoft preset)")
    deviceUrl = client.deviceUrl

    async def start() -> DeviceAuthorization:
        body = urlencode({"client_id": client.clientId, "scope": client.scope})
        try:
            status, content = await post(deviceUrl, body.encode("ascii"))
        except Exception as e:
            raise TokenError("unavailable", f"{type(e).__name__}: {e}") from None
        try:
            answer = json.loads(content)
            code, user, uri = answer["device_code"], answer["user_code"], answer["verification_uri"]
        except (ValueError, KeyError):
            raise TokenError("refused", f"HTTP {status}: no device code in the answer") from None
        return DeviceAuthorization(
            userCode=user,
            verificationUri=uri,
            message=answer.get("message") or f"Open {uri} and enter the code {user}.",
            interval=float(answer.get("interval", 5)),
            expiresIn=float(answer.get("expires_in", 900)),
            deviceCode=code,
        )

    return Deferred.fromCoroutine(start())


def pollDevice(post: Post, client: ConsentClient, device: DeviceAuthorization, reactor: IRelayReactor) -> Deferred[str]:
    """Wait for the user's consent (RFC 8628 §3.4): the refresh token, or L{TokenError}."""
    oauth = DeviceClient(client.clientId)
    body = oauth.prepare_request_body(
        device_code=device.deviceCode,
        include_client_id=True,
        **({"client_secret": client.clientSecret} if client.clientSecret else {}),
    )

    async def poll() -> str:
        interval, deadline = device.interval, reactor.seconds() + device.expiresIn
        while reactor.seconds() < deadline:
            await deferLater(reactor, interval, lambda: None)
            try:
                tokens = await requestTokens(post, client.tokenUrl, body, oauth)
            except TokenError as e:
                if e.error == "authorization_pending":
                    continue
                if e.error == "slow_down":
                    interval += 5
                    continue
                raise
            if not tokens.get("refresh_token"):
                raise TokenError("refused", "the provider gave no refresh token (ask for offline_access)")
            return tokens["refresh_token"]
        raise TokenError("refused", "the device code expired before the user consented")

    return Deferred.fromCoroutine(poll())
