"""
Access tokens for XOAUTH2 upstreams (relay.upstreams.oauth), on a
twisted Clock with the token endpoint's answers under the test's control:
the grants' requests, the cache, renewal before expiry, one request for
many callers, the fallback to a token still valid, rotated refresh tokens
stored back and re-read, and the errors a client is told.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.core.credentials import OAuthClient
from relay.seams.upstream import TokenError
from relay.upstreams.oauth import AccessTokens, IRefreshTokens, provider

APP = OAuthClient(tokenUrl="https://login.example/token", clientId="app", scope="s/.default", clientSecret="shh")
USER = OAuthClient(tokenUrl="https://login.example/token", clientId="app", refreshToken="rt-1", upstreamId=7)


class Endpoint:
    """The token endpoint: each POST waits for the test to answer it."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str], Deferred]] = []

    def post(self, url: str, body: bytes) -> Deferred:
        d: Deferred = Deferred()
        self.requests.append((url, {k: v[0] for k, v in parse_qs(body.decode()).items()}, d))
        return d

    def answer(self, status: int = 200, **fields) -> None:
        pending = [d for _, _, d in self.requests if not d.called]
        pending[0].callback((status, json.dumps(fields).encode()))

    def token(self, access: str, expiresIn: int = 3600, **more) -> None:
        self.answer(200, access_token=access, token_type="Bearer", expires_in=expiresIn, **more)


@implementer(IRefreshTokens)
class Stored:
    def __init__(self, token: str):
        self.token = token
        self.saved: list[tuple[int, str, str]] = []

    def load(self, upstreamId):
        return succeed(self.token)

    def save(self, upstreamId, old, new):
        self.saved.append((upstreamId, old, new))
        if self.token != old:
            return succeed(False)
        self.token = new
        return succeed(True)


def result(d: Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "not answered yet"
    if isinstance(out[0], Failure):
        return out[0].value
    return out[0]


def setup(stored=None):
    clock, endpoint = Clock(), Endpoint()
    return clock, endpoint, AccessTokens(clock, post=endpoint.post, refreshTokens=stored)


def test_client_credentials_request_and_cache():
    """The app-only grant: client id, secret and scope in the form; the token is reused until it is due."""
    clock, endpoint, tokens = setup()
    d = tokens.token(APP)
    [(url, form, _)] = endpoint.requests
    assert url == APP.tokenUrl
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "app",
        "client_secret": "shh",
        "scope": "s/.default",
    }
    endpoint.token("at-1", expiresIn=3600)
    assert result(d).value == "at-1"
    clock.advance(3600 - 301)
    assert result(tokens.token(APP)).value == "at-1" and len(endpoint.requests) == 1


def test_renewed_before_expiry():
    """
    In the last fifth of its life (5 minutes at most) a token is replaced:
    the caller gets the new one, never one about to expire.
    """
    clock, endpoint, tokens = setup()
    tokens.token(APP)
    endpoint.token("at-1", expiresIn=100)
    clock.advance(81)  # past 100 - 100/5
    d = tokens.token(APP)
    assert len(endpoint.requests) == 2 and not d.called
    endpoint.token("at-2", expiresIn=100)
    assert result(d).value == "at-2"


def test_concurrent_callers_share_one_request():
    """Callers that ask while a token is being fetched share that one request."""
    _, endpoint, tokens = setup()
    waiting = [tokens.token(APP) for _ in range(5)]
    assert len(endpoint.requests) == 1
    endpoint.token("at-1")
    assert {result(d).value for d in waiting} == {"at-1"}


def test_refresh_grant_rotation_stored():
    """The refresh-token grant; a rotated refresh token is stored back and used next time."""
    clock, endpoint, tokens = setup(stored := Stored("rt-1"))
    tokens.token(USER)
    assert endpoint.requests[0][1] == {"grant_type": "refresh_token", "client_id": "app", "refresh_token": "rt-1"}
    endpoint.token("at-1", expiresIn=10, refresh_token="rt-2")
    assert stored.saved == [(7, "rt-1", "rt-2")] and stored.token == "rt-2"
    clock.advance(9)
    tokens.token(USER)
    assert endpoint.requests[1][1]["refresh_token"] == "rt-2"


def test_invalid_grant_rereads_the_stored_token():
    """Another process rotated the refresh token first: ours is refused, the stored one is read and tried once."""
    _, endpoint, tokens = setup(Stored("rt-9"))
    d = tokens.token(USER)
    endpoint.answer(400, error="invalid_grant", error_description="AADSTS70000: refresh token not valid")
    assert endpoint.requests[1][1]["refresh_token"] == "rt-9"
    endpoint.token("at-1")
    assert result(d).value == "at-1"


def test_endpoint_unavailable_is_451():
    """A token endpoint that cannot be reached or answers 5xx: unavailable, 451 4.4.1 for the client."""
    clock = Clock()
    tokens = AccessTokens(clock, post=lambda url, body: fail(ConnectionRefusedError("refused")))
    error = result(tokens.token(APP))
    assert isinstance(error, TokenError) and error.kind == "unavailable"
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.1") and "ConnectionRefusedError" in str(error)
    _, endpoint, tokens = setup()
    d = tokens.token(APP)
    endpoint.answer(503, error="temporarily_unavailable")
    error = result(d)
    assert error.kind == "unavailable" and "HTTP 503" in str(error)


def test_refusal_is_454_with_the_providers_error():
    """An OAuth error response: refused, 454 4.7.0, with the provider's code and description and no secret."""
    _, endpoint, tokens = setup()
    d = tokens.token(APP)
    endpoint.answer(401, error="invalid_client", error_description="AADSTS7000215: Invalid client secret.")
    error = result(d)
    assert isinstance(error, TokenError) and error.kind == "refused" and error.error == "invalid_client"
    assert (error.reply.code, error.reply.enhanced) == (454, "4.7.0")
    assert "AADSTS7000215" in str(error) and "shh" not in str(error)


def test_a_valid_token_outlives_a_failed_renewal():
    """If renewing fails while the current token is still valid, the current one is used."""
    clock, endpoint, tokens = setup()
    tokens.token(APP)
    endpoint.token("at-1", expiresIn=100)
    clock.advance(90)
    d = tokens.token(APP)
    endpoint.answer(503)
    assert result(d).value == "at-1"
    clock.advance(10)
    d = tokens.token(APP)
    endpoint.answer(503)
    assert isinstance(result(d), TokenError)  # expired: nothing to fall back on


def test_a_new_consent_replaces_the_cache():
    """A refresh token from a new consent (the store changed it) starts afresh, whatever was cached."""
    _, endpoint, tokens = setup(Stored("rt-1"))
    tokens.token(USER)
    endpoint.token("at-1", refresh_token="rt-2")
    assert result(tokens.token(USER)).value == "at-1"  # the snapshot's rt-1: still this consent
    consented = OAuthClient(tokenUrl=USER.tokenUrl, clientId="app", refreshToken="rt-new", upstreamId=7)
    tokens.token(consented)
    assert endpoint.requests[-1][1]["refresh_token"] == "rt-new"


def test_presets():
    """--oauth-provider fills the endpoints and the scopes."""
    microsoft = provider("microsoft:contoso.onmicrosoft.com")
    assert microsoft.tokenUrl == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert microsoft.appScope == "https://outlook.office365.com/.default"
    assert "SMTP.Send" in microsoft.userScope and "offline_access" in microsoft.userScope
    google = provider("google")
    assert google.tokenUrl == "https://oauth2.googleapis.com/token" and google.userScope == "https://mail.google.com/"
    for bad in ("microsoft", "microsoft:", "yahoo", "google:x"):
        with pytest.raises(ValueError):
            provider(bad)
