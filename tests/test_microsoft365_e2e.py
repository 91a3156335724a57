"""
Microsoft 365 and Google Workspace as upstreams, end to end on loopback:
a local OAuth 2.0 provider (tests/support/oauthserver.py) and a test
upstream that takes AUTH XOAUTH2 only with a bearer token the provider
issued and that has not expired; client certificates seen by the upstream;
C{smtprelay-admin upstream test} and C{upstream oauth-consent}; a hung
primary upstream remembered as down.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from relay.store.values import OAuthSettings
from tests.support.oauthserver import OAuthServer
from tests.support.relay import Account, RelayProcess, upstreamURL
from tests.support.upstream import UpstreamServer

MAILBOX = "relay%40contoso.example"  # the mailbox the token lets us send as, in the URL's user
MESSAGE = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: oauth\r\n\r\nhello\r\n"
ADMIN = [sys.executable, "-m", "relay.admin.cli"]
# oauthlib refuses to build an authorization URL that is not https://; the test provider is http on loopback.
LOOPBACK = {**os.environ, "OAUTHLIB_INSECURE_TRANSPORT": "1"}


def ca(relay: RelayProcess) -> str:
    return str(relay.ca.cert)


def xoauth2URL(upstream: UpstreamServer, relay: RelayProcess) -> str:
    return upstreamURL(upstream, "smtp+starttls", f"{MAILBOX}@", auth="xoauth2", ca=ca(relay))


def send(relay: RelayProcess, account: Account, marker: str = "") -> tuple[int, bytes]:
    with relay.connect(account) as client:
        client.mail("a@example.com")
        code, text = client.rcpt("b@example.net")
        if code != 250:
            return code, text
        return client.data(MESSAGE.replace(b"hello", f"hello {marker}".encode()))


@pytest.fixture
def provider():
    with OAuthServer({"app-id": "app-secret-1f3c", "public-id": None}) as server:
        yield server


@pytest.fixture
def oauthUpstream(provider, upstreamCert):
    def bearer(user: str, token: str) -> bool:
        return user == "relay@contoso.example" and provider.valid(token)

    with UpstreamServer(tls=upstreamCert, requireTLS=True, bearer=bearer) as server:
        yield server


def tenantWithOAuth(relay, name: str, upstream, oauth: OAuthSettings) -> Account:
    account = relay.addTenant(name)
    relay.addUpstream(name, xoauth2URL(upstream, relay), oauth=oauth)
    return account


def appOnly(provider: OAuthServer) -> OAuthSettings:
    return OAuthSettings(
        tokenUrl=provider.tokenUrl,
        clientId="app-id",
        scope="https://outlook.office365.com/.default",
        clientSecret="app-secret-1f3c",
    )


def test_client_credentials_delivery_and_one_token(relay, provider, oauthUpstream, tenantName):
    """
    App-only OAuth (Microsoft's SMTP.SendAsApp): the relay fetches a token,
    authenticates with XOAUTH2 and delivers; two sessions at once and later
    messages share the one token.
    """
    account = tenantWithOAuth(relay, tenantName, oauthUpstream, appOnly(provider))
    with relay.connect(account) as one, relay.connect(account) as two:
        for client in (one, two):  # both hold an upstream session at once
            client.mail("a@example.com")
            assert client.rcpt("b@example.net")[0] == 250
        assert one.data(MESSAGE)[0] == 250 and two.data(MESSAGE)[0] == 250
    assert send(relay, account, "m3")[0] == 250
    oauthUpstream.waitForMessages(3)
    grants = provider.grants("client_credentials")
    assert len(grants) == 1 and grants[0]["scope"] == "https://outlook.office365.com/.default"
    assert oauthUpstream.connections >= 2  # two sessions authenticated with the same token


def test_token_renewed_before_it_expires(relay, upstreamCert, tenantName):
    """
    A token of 3 s: a session is not used past its token's expiry, and the
    next message gets a fresh token; the upstream never sees an expired one.
    """
    with OAuthServer({"app-id": "app-secret-1f3c"}, expiresIn=3) as provider:

        def bearer(user, token):
            return provider.valid(token)

        with UpstreamServer(tls=upstreamCert, requireTLS=True, bearer=bearer) as upstream:
            account = tenantWithOAuth(relay, tenantName, upstream, appOnly(provider))
            assert send(relay, account, "first")[0] == 250
            deadline = time.monotonic() + 10
            while len(provider.grants()) < 2 and time.monotonic() < deadline:
                assert send(relay, account)[0] == 250
            assert len(provider.grants()) >= 2, "the token was renewed"
            logins = [c for commands in upstream.commands for c in commands if c.startswith("AUTH XOAUTH2")]
            assert len(logins) >= 2  # each accepted: every send above got its 250


def test_refresh_token_rotated_and_stored(relay, upstreamCert, tenantName):
    """
    The delegated grant with strict rotation: each refresh gives a new
    refresh token and the old one stops working; the relay stores the new
    one (encrypted) and a restart-free second renewal uses it.
    """
    with OAuthServer({"public-id": None}, expiresIn=3, rotate=True, strict=True) as provider:
        first = provider.issueRefreshToken("public-id")
        with UpstreamServer(tls=upstreamCert, requireTLS=True, bearer=lambda u, t: provider.valid(t)) as upstream:
            account = relay.addTenant(tenantName)
            upstreamId = relay.addUpstream(
                tenantName,
                xoauth2URL(upstream, relay),
                oauth=OAuthSettings(tokenUrl=provider.tokenUrl, clientId="public-id", refreshToken=first),
            )
            assert send(relay, account)[0] == 250
            stored = relay.store.loadRefreshToken(upstreamId)
            assert stored != first and stored in provider.refreshTokens()
            deadline = time.monotonic() + 10
            while len(provider.grants("refresh_token")) < 2 and time.monotonic() < deadline:
                assert send(relay, account)[0] == 250
            second = provider.grants("refresh_token")[1]["refresh_token"]
            assert second == stored  # the rotated one, not the spent one
            assert relay.store.loadRefreshToken(upstreamId) in provider.refreshTokens()
            raw = open(relay.database.removeprefix("sqlite:///"), "rb").read()
            for token in [first, stored, relay.store.loadRefreshToken(upstreamId)]:
                assert token.encode() not in raw


def test_endpoint_down_fails_over_and_says_why(relay, provider, oauthUpstream, upstream, tenantName):
    """
    The token endpoint answers 503: the OAuth upstream is skipped for the
    next one by priority; with no other, RCPT gets 451 4.4.1 and the log has
    the provider's answer.
    """
    provider.mode = "unavailable"
    account = tenantWithOAuth(relay, tenantName, oauthUpstream, appOnly(provider))
    code, text = send(relay, account)
    assert (code, text[:5]) == (451, b"4.4.1") and b"token endpoint unavailable" in text
    assert re.search(r"OAuth token from .*/token for client app-id: HTTP 503", relay.log())
    relay.addUpstream(tenantName, upstreamURL(upstream, ca=ca(relay)), priority=20)
    assert send(relay, account, "failover")[0] == 250
    assert b"failover" in upstream.waitForMessages(1)[0].data


def test_token_refused_is_454(relay, provider, oauthUpstream, tenantName):
    """A refused client (invalid_client): 454 4.7.0 with the provider's error, at every RCPT; the secret nowhere."""
    provider.mode = "refuse"
    account = tenantWithOAuth(relay, tenantName, oauthUpstream, appOnly(provider))
    code, text = send(relay, account)
    assert (code, text[:5]) == (454, b"4.7.0") and b"invalid_client" in text and b"AADSTS7000215" in text
    assert "AADSTS7000215" in relay.log()
    for place in (
        relay.log(),
        relay.stdout(),
        open(relay.database.removeprefix("sqlite:///"), "rb").read().decode("latin-1"),
    ):
        assert "app-secret-1f3c" not in place


def test_bad_token_refused_by_the_upstream(relay, upstreamCert, tenantName):
    """An upstream refusing our token (the 334 error challenge, then 535): 454 4.7.0 with its answer."""
    with OAuthServer({"app-id": "app-secret-1f3c"}) as provider:
        with UpstreamServer(tls=upstreamCert, requireTLS=True, bearer=lambda u, t: False) as upstream:
            account = tenantWithOAuth(relay, tenantName, upstream, appOnly(provider))
            code, text = send(relay, account)
    assert (code, text[:5]) == (454, b"4.7.0") and b"535 5.7.3" in text  # after our empty line to its challenge


def test_client_certificate_presented(relay, upstreamCert, tenantName, tmp_path):
    """A tenant's client certificate (a certificate connector) is what the upstream sees in the handshake."""
    mine = relay.ca.issue(tmp_path, "mail.contoso.example", hostnames=["mail.contoso.example"], ips=[])
    with UpstreamServer(tls=upstreamCert, requireTLS=True, clientCA=relay.ca.cert) as upstream:
        account = relay.addTenant(tenantName)
        relay.addUpstream(
            tenantName,
            upstreamURL(upstream, "smtp+starttls", ca=ca(relay)),
            clientCertificate=(Path(mine.chain).read_bytes(), Path(mine.key).read_bytes()),
        )
        assert send(relay, account)[0] == 250
        assert upstream.clientCertificates == ["mail.contoso.example"]
    raw = open(relay.database.removeprefix("sqlite:///"), "rb").read()
    assert Path(mine.key).read_bytes().strip().splitlines()[1] not in raw  # the key is stored encrypted


def admin(relay: RelayProcess, *args: str, stdin: str | None = None, timeout: float = 60):
    return subprocess.run(
        [*ADMIN, "--database", relay.database, "--secret-key-file", str(relay.keyFile), *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, cwd=os.getcwd(),
    )  # fmt: skip


def firstUpstream(relay: RelayProcess, tenant: str) -> str:
    return f"#{relay.store.showTenant(tenant).upstreams[0].id}"


def test_upstream_test_verified(relay, upstreamCert, tenantName):
    """upstream test: banner, EHLO, TLS, a verified certificate, AUTH; exit 0; no mail sent."""
    with UpstreamServer(tls=upstreamCert, requireTLS=True, auth=("u", "p")) as upstream:
        relay.addTenant(tenantName, upstreamURL(upstream, "smtp+starttls", "u:p@", ca=ca(relay)))
        result = admin(relay, "upstream", "test", tenantName, firstUpstream(relay, tenantName))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "banner: 220 upstream.test ESMTP" in out and "STARTTLS: 220 2.0.0 Ready to start TLS" in out
    assert "EHLO: 8BITMIME AUTH PLAIN LOGIN" in out and "TLS: TLSv1.3" in out
    assert "certificate verified" in out and "certificate: CN=upstream" in out
    assert "AUTH: 235 2.7.0 Authentication successful" in out and out.rstrip().endswith(
        "OK: the relay can deliver here"
    )
    assert upstream.messages == [] and upstream.commands[-1][-1] == "QUIT"


def test_upstream_test_unverifiable(relay, ca, tmp_path, tenantName):
    """A certificate for another name: upstream test says which and why, and exits 1."""
    wrong = ca.issue(tmp_path, "wrong", hostnames=["wrong.invalid"], ips=[])
    with UpstreamServer(tls=wrong, requireTLS=True) as upstream:
        relay.addTenant(tenantName, upstreamURL(upstream, "smtp+starttls", ca=str(ca.cert)))
        result = admin(relay, "upstream", "test", tenantName, firstUpstream(relay, tenantName))
    assert result.returncode == 1
    assert "certificate NOT verified: certificate for wrong.invalid does not match 127.0.0.1" in result.stdout
    assert "FAILED: " in result.stdout


def test_upstream_test_xoauth2(relay, provider, oauthUpstream, tenantName):
    """upstream test of an OAuth upstream: the token fetched, AUTH XOAUTH2 accepted."""
    tenantWithOAuth(relay, tenantName, oauthUpstream, appOnly(provider))
    result = admin(relay, "upstream", "test", tenantName, firstUpstream(relay, tenantName))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AUTH: 235 2.7.0 Authentication successful" in result.stdout
    assert len(provider.grants("client_credentials")) == 1


def test_oauth_consent_in_a_browser(relay, provider, oauthUpstream, tenantName):
    """
    upstream oauth-consent: it prints the authorization URL and listens on
    loopback; the browser (here urllib, following the provider's redirect)
    brings the code back; the refresh token is stored and mail flows.
    """
    account = relay.addTenant(tenantName)
    oauth = OAuthSettings(tokenUrl=provider.tokenUrl, clientId="public-id", scope="SMTP.Send offline_access")
    upstreamId = relay.addUpstream(tenantName, xoauth2URL(oauthUpstream, relay), oauth=oauth)
    command = [*ADMIN, "--database", relay.database, "--secret-key-file", str(relay.keyFile), "upstream",
               "oauth-consent", tenantName, f"#{upstreamId}", "--authorize-url", f"{provider.base}/authorize",
               "--wait", "30"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LOOPBACK) as process:
        lines = []
        while not any(line.startswith("http") for line in lines):
            line = process.stdout.readline()
            assert line, f"no authorization URL: {lines} {process.stderr.read()}"
            lines.append(line.strip())
        url = next(line for line in lines if line.startswith("http"))
        assert "code_challenge_method=S256" in url and "redirect_uri=http%3A%2F%2Flocalhost%3A" in url
        with urllib.request.urlopen(url, timeout=10) as answer:  # the browser, following the redirect
            assert b"Consent received" in answer.read()
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, out + err
    assert relay.store.loadRefreshToken(upstreamId) in provider.refreshTokens()
    relay.waitForGeneration(relay.store.generation())
    assert send(relay, account)[0] == 250


def test_oauth_consent_with_a_device_code(relay, provider, oauthUpstream, tenantName):
    """--device: the code to type in is printed; once the user consents, the refresh token is stored."""
    relay.addTenant(tenantName)
    oauth = OAuthSettings(tokenUrl=provider.tokenUrl, clientId="public-id", scope="SMTP.Send offline_access")
    upstreamId = relay.addUpstream(tenantName, xoauth2URL(oauthUpstream, relay), oauth=oauth)
    command = [*ADMIN, "--database", relay.database, "--secret-key-file", str(relay.keyFile), "upstream",
               "oauth-consent", tenantName, f"#{upstreamId}", "--device", "--device-url",
               f"{provider.base}/devicecode", "--wait", "30"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        line = process.stdout.readline()
        match = re.search(r"enter the code (\w+)", line)
        assert match, line + process.stderr.read()
        provider.approveDevice(match.group(1))
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, out + err
    assert relay.store.loadRefreshToken(upstreamId) in provider.refreshTokens()


def test_hung_primary_costs_one_timeout(relay, upstream, tenantName):
    """
    A primary that accepts connections and never greets: the first message
    waits for its timeout and fails over; the next ones go straight to the
    secondary, and smtprelay_upstream_up says the primary is down.
    """
    with UpstreamServer() as hung:
        hung.setHang("CONNECT")
        account = relay.addTenant(tenantName, upstreamURL(hung), upstreamURL(upstream, ca=ca(relay)))
        started = time.monotonic()
        assert send(relay, account, "first")[0] == 250
        first = time.monotonic() - started
        later = []
        for i in range(3):
            started = time.monotonic()
            assert send(relay, account, f"later{i}")[0] == 250
            later.append(time.monotonic() - started)
        upstream.waitForMessages(4)
        assert first >= 5  # --upstream-timeout=5 in the tests
        assert max(later) < 5, later  # none waited for the hung primary again
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.metricsPort}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert f'smtprelay_upstream_up{{tenant="{tenantName}",upstream="smtp://127.0.0.1:{hung.port}"}} 0.0' in metrics
