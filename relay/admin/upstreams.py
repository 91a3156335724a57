"""
The C{smtprelay-admin upstream} commands that go beyond a row of the
store: adding an upstream with its OAuth client or client certificate,
testing one as the relay would (C{upstream test}) and a user's OAuth
consent (C{upstream oauth-consent}).  The last two talk to the network,
through a reactor run for the one command.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from relay.core.urls import UpstreamURL
from relay.seams.discovery import discover
from relay.seams.upstream import TokenError, UpstreamContext
from relay.store.errors import Invalid
from relay.store.repository import Store
from relay.store.values import OAuthSettings
from relay.upstreams import consent
from relay.upstreams.diagnose import diagnose
from relay.upstreams.oauth import AccessTokens, StoredRefreshTokens, provider, treqPost

__all__ = ["addArguments", "oauthConsent", "upstreamAdd", "upstreamTest"]

TIMEOUT = 30.0  # seconds for each reply while testing


def addArguments(add: argparse.ArgumentParser, test: argparse.ArgumentParser, grant: argparse.ArgumentParser) -> None:
    """The options of C{upstream add}, C{upstream test} and C{upstream oauth-consent}."""
    add.add_argument("--priority", type=int, default=10, help="lowest is tried first (default: 10)")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the URL's password from one line of standard input (the URL has user@ and no password)",
    )
    oauth = add.add_argument_group("OAuth 2.0 (the URL says ?auth=xoauth2 and has the mailbox as its user)")
    oauth.add_argument(
        "--oauth-provider",
        metavar="PRESET",
        help="microsoft:TENANT_ID or google: fills the token URL and the scope",
    )
    oauth.add_argument("--oauth-token-url", metavar="URL", help="the provider's token endpoint (https://)")
    oauth.add_argument("--oauth-client-id", metavar="ID", help="the application (client) id")
    oauth.add_argument("--oauth-scope", metavar="SCOPE", help="space-separated scopes (default: the preset's)")
    oauth.add_argument(
        "--oauth-client-secret-stdin",
        action="store_true",
        help="read the client secret from a line of standard input (app-only: the client-credentials grant)",
    )
    oauth.add_argument(
        "--oauth-refresh-token-stdin",
        action="store_true",
        help="read a refresh token from a line of standard input (after the client secret, if both); "
        "without one, run upstream oauth-consent",
    )
    certificate = add.add_argument_group("client certificate (Microsoft 365 certificate-based connectors)")
    certificate.add_argument("--client-cert", metavar="PEM", type=Path, help="the certificate, then its chain")
    certificate.add_argument("--client-key", metavar="PEM", type=Path, help="its private key")

    test.add_argument("--hostname", default=socket.getfqdn(), help="the name to say in EHLO (the relay's)")

    grant.add_argument(
        "--device", action="store_true", help="the device-code flow (Microsoft): type a code on any device"
    )
    grant.add_argument("--port", type=int, default=0, help="the loopback redirect's port (default: any free one)")
    grant.add_argument("--authorize-url", metavar="URL", help="the authorization endpoint (default: the preset's)")
    grant.add_argument("--device-url", metavar="URL", help="the device authorization endpoint (default: the preset's)")
    grant.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the consent (default: 600)")


def _line(what: str) -> str:
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise Invalid(f"no {what} on standard input (expected one line)")
    return line


def upstreamAdd(args: argparse.Namespace, store: Store, validate: Callable[[UpstreamURL], None]) -> None:
    url = args.url
    if args.password_stdin:
        try:
            parsed = UpstreamURL.parse(url)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if parsed.username is None or parsed.password is not None:
            raise Invalid(
                "--password-stdin needs a URL with a user name and no password: smtp+starttls://user@host:587"
            )
        url = parsed.withPassword(_line("password")).unparse()
    oauth = _oauthSettings(args)
    certificate = None
    if (args.client_cert is None) != (args.client_key is None):
        raise Invalid("--client-cert and --client-key go together")
    if args.client_cert is not None:
        try:
            certificate = (args.client_cert.read_bytes(), args.client_key.read_bytes())
        except OSError as e:
            raise Invalid(f"cannot read the client certificate or key: {e}") from None
    upstream = store.addUpstream(
        args.tenant, url, args.priority, validate=validate, oauth=oauth, clientCertificate=certificate
    )
    print(f"upstream #{upstream.id} {upstream.url} added to tenant {args.tenant!r} (priority {upstream.priority})")
    if upstream.oauth is not None and not upstream.oauth.hasRefreshToken and not upstream.oauth.hasClientSecret:
        print(f"next: smtprelay-admin upstream oauth-consent {args.tenant} '#{upstream.id}'")


def _oauthSettings(args: argparse.Namespace) -> OAuthSettings | None:
    given = args.oauth_provider or args.oauth_token_url or args.oauth_client_id
    if not given:
        if args.oauth_client_secret_stdin or args.oauth_refresh_token_stdin or args.oauth_scope:
            raise Invalid("OAuth options need --oauth-client-id and --oauth-provider or --oauth-token-url")
        return None
    secret = _line("client secret") if args.oauth_client_secret_stdin else None
    refresh = _line("refresh token") if args.oauth_refresh_token_stdin else None
    tokenUrl, scope = args.oauth_token_url, args.oauth_scope
    if args.oauth_provider:
        try:
            preset = provider(args.oauth_provider)
        except ValueError as e:
            raise Invalid(str(e)) from None
        tokenUrl = tokenUrl or preset.tokenUrl
        appOnly = secret is not None and refresh is None and preset.appScope is not None
        scope = scope or (preset.appScope if appOnly else preset.userScope)
    if not tokenUrl or not args.oauth_client_id:
        raise Invalid("an OAuth client needs --oauth-client-id and --oauth-provider or --oauth-token-url")
    return OAuthSettings(
        tokenUrl=tokenUrl,
        clientId=args.oauth_client_id,
        scope=scope,
        provider=args.oauth_provider,
        clientSecret=secret,
        refreshToken=refresh,
    )


def _react(main: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    """Run C{main(reactor)} on the global reactor until it ends; its exit status."""
    from twisted.internet import reactor

    outcome: list[int] = []

    def finished(result: object) -> None:
        if isinstance(result, int):
            outcome.append(result)
        else:
            print(f"smtprelay-admin: error: {getattr(result, 'value', result)}", file=sys.stderr)
            outcome.append(1)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main(reactor)).addBoth(finished))
    cast(Any, reactor).run(installSignalHandlers=False)
    return outcome[0] if outcome else 1


def upstreamTest(args: argparse.Namespace, store: Store) -> int:
    """Open a session to the upstream as the relay would, say what it showed, QUIT; 0 when it worked."""
    info, upstream = store.findUpstream(args.tenant, args.upstream)
    types = discover().typesByScheme()
    kind = types.get(upstream.url.scheme)
    if kind is None:
        raise Invalid(f"no upstream type installed for {upstream.url.scheme}://")

    async def main(reactor) -> int:
        pool = ThreadPool(minthreads=1, maxthreads=1, name="smtprelay-admin")
        pool.start()
        try:
            context = UpstreamContext(
                reactor=reactor,
                hostname=args.hostname,
                threadPool=pool,
                timeout=TIMEOUT,
                tokens=AccessTokens(reactor, refreshTokens=StoredRefreshTokens(store, reactor, pool), timeout=TIMEOUT),
            )
            diagnosis = await diagnose(kind, upstream.url, context)
        finally:
            pool.stop()
        print(f"#{info.id} of tenant {args.tenant!r}")
        for line in diagnosis.lines():
            print(line)
        return 0 if diagnosis.ok else 1

    return _react(main)


class _Redirect(Resource):
    """The loopback redirect (RFC 8252 §7.3): the browser brings the code here."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.state: str | None = None  # the authorization request's, once it is made
        self.code: Deferred[str] = Deferred()

    def render_GET(self, request) -> bytes:
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.code.called:
            return b"Already answered; you can close this window.\n"
        if self.state is None or query.get("state") != self.state:
            return b"This answer does not belong to the consent under way (state mismatch).\n"
        if "error" in query:
            self.code.errback(TokenError("refused", f"{query['error']}: {query.get('error_description', '')}"))
            return b"Consent refused; you can close this window.\n"
        if "code" not in query:
            return b"No authorization code in this answer.\n"
        self.code.callback(query["code"])
        return b"Consent received: smtprelay stores it now. You can close this window.\n"


def oauthConsent(args: argparse.Namespace, store: Store) -> int:
    """A user's consent for an OAuth upstream; its refresh token stored."""
    info, upstream = store.findUpstream(args.tenant, args.upstream)
    oauth = upstream.url.credentials.oauth if upstream.url.credentials is not None else None
    if info.oauth is None or oauth is None:
        raise Invalid(f"upstream #{info.id} has no OAuth client (add it with --oauth-provider or --oauth-token-url)")
    preset = provider(info.oauth.provider) if info.oauth.provider else None
    client = consent.ConsentClient(
        clientId=oauth.clientId,
        tokenUrl=oauth.tokenUrl,
        authorizeUrl=args.authorize_url or (preset.authorizeUrl if preset else None),
        deviceUrl=args.device_url or (preset.deviceUrl if preset else None),
        scope=oauth.scope or (preset.userScope if preset else ""),
        clientSecret=oauth.clientSecret,
    )
    if args.device and client.deviceUrl is None:
        raise Invalid("no device authorization URL: give --device-url (Google offers no device flow for mail)")
    if not args.device and client.authorizeUrl is None:
        raise Invalid("no authorization URL: give --authorize-url or use a provider preset")

    async def main(reactor) -> int:
        post = treqPost(reactor, TIMEOUT)
        if args.device:
            device = await consent.startDevice(post, client)
            print(device.message, flush=True)
            refresh = await consent.pollDevice(post, client, device, reactor)
        else:
            refresh = await _browserConsent(reactor, post, client, args.port, args.wait)
        store.setRefreshToken(info.id, refresh)
        print(f"consent stored for upstream #{info.id} of tenant {args.tenant!r}; the relay uses it within seconds")
        return 0

    return _react(main)


async def _browserConsent(reactor, post, client: consent.ConsentClient, port: int, wait: float) -> str:
    redirect = _Redirect()
    listening = reactor.listenTCP(port, Site(redirect), interface="127.0.0.1")
    authorized = consent.authorization(client, f"http://localhost:{listening.getHost().port}/")
    redirect.state = authorized.state
    print("Open this address in a browser, sign in as the mailbox's user and consent:", flush=True)
    print(authorized.url, flush=True)
    try:
        code = await redirect.code.addTimeout(wait, reactor)
    finally:
        await listening.stopListening()
    return await consent.exchangeCode(post, client, authorized, code)
