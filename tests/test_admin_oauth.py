"""
C{smtprelay-admin upstream add} with an OAuth 2.0 client or a client
certificate: the presets, secrets read from standard input and never
shown, consistency with the URL, and C{secrets rotate} covering them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adminfixtures import acme, keyFile, run, snapshot  # noqa: F401
from tests.storefixtures import databaseURL, postgresqlDatabase  # noqa: F401
from tests.support.certs import makeCA
from tests.support.storedtext import storedText

XOAUTH2 = "smtp+starttls://relay%40acme.example@smtp.office365.com:587?auth=xoauth2"
SECRET = "client-secret-Zq8"
REFRESH = "refresh-token-Yp7"


def test_microsoft_app_only(acme, databaseURL, keyFile):
    """The microsoft preset with a client secret: the client-credentials grant, the .default scope, no secret shown."""
    result = acme(
        "upstream", "add", "acme", XOAUTH2, "--oauth-provider", "microsoft:contoso.onmicrosoft.com",
        "--oauth-client-id", "app-1", "--oauth-client-secret-stdin", stdin=SECRET + "\n",
    )  # fmt: skip
    assert (result.status, result.err) == (0, "")
    shown = acme("tenant", "show", "acme").out
    assert (
        "OAuth client_credentials: client app-1 at https://login.microsoftonline.com/contoso.onmicrosoft.com/" in shown
    )
    assert "scope https://outlook.office365.com/.default" in shown and "client secret ***" in shown
    exported = acme("tenant", "export", "acme").out
    assert "OAuth client secrets and refresh tokens" in json.loads(exported)["redacted"]
    for text in (result.out, shown, exported):
        assert SECRET not in text
    [upstream] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    oauth = upstream.url.credentials.oauth
    assert (oauth.clientSecret, oauth.grant, oauth.upstreamId) == (SECRET, "client_credentials", 1)
    assert SECRET.encode() not in storedText(databaseURL)


def test_google_with_secret_and_refresh_token(acme, databaseURL, keyFile):
    """Both secrets from standard input, in order; the google preset's mail scope for the delegated grant."""
    result = acme(
        "upstream", "add", "acme", XOAUTH2.replace("smtp.office365.com", "smtp.gmail.com"), "--oauth-provider",
        "google", "--oauth-client-id", "web-1", "--oauth-client-secret-stdin", "--oauth-refresh-token-stdin",
        stdin=f"{SECRET}\n{REFRESH}\n",
    )  # fmt: skip
    assert result.status == 0, result.err
    [upstream] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    oauth = upstream.url.credentials.oauth
    assert (oauth.tokenUrl, oauth.scope) == ("https://oauth2.googleapis.com/token", "https://mail.google.com/")
    assert (oauth.clientSecret, oauth.refreshToken, oauth.grant) == (SECRET, REFRESH, "refresh_token")


def test_awaiting_consent(acme):
    """A public client with neither secret: added, and the next step is named."""
    result = acme(
        "upstream", "add", "acme", XOAUTH2, "--oauth-provider", "microsoft:contoso", "--oauth-client-id", "pub-1"
    )
    assert result.status == 0 and "next: smtprelay-admin upstream oauth-consent acme '#1'" in result.out
    assert "none yet (upstream oauth-consent gives it a refresh token)" in acme("tenant", "show", "acme").out


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        ([XOAUTH2], "", "auth=xoauth2 needs an OAuth client"),
        (["smtp+starttls://u@h.example:587", "--oauth-provider", "google", "--oauth-client-id", "x"], "",
         "an OAuth client is for an SMTP upstream with ?auth=xoauth2"),
        ([XOAUTH2, "--oauth-token-url", "http://login.example/token", "--oauth-client-id", "x"], "",
         "the OAuth token URL must be https://"),
        ([XOAUTH2, "--oauth-provider", "yahoo", "--oauth-client-id", "x"], "", "unknown OAuth provider 'yahoo'"),
        ([XOAUTH2, "--oauth-provider", "google"], "", "needs --oauth-client-id"),
        ([XOAUTH2, "--oauth-client-secret-stdin"], "s\n", "OAuth options need --oauth-client-id"),
        ([XOAUTH2, "--oauth-provider", "google", "--oauth-client-id", "x", "--oauth-client-secret-stdin"], "",
         "no client secret on standard input"),
        (["smtp+starttls://relay:pw@smtp.office365.com:587?auth=xoauth2"], "",
         "needs the mailbox as user name and no password"),
    ],
)  # fmt: skip
def test_refused(acme, args, stdin, message):
    """Each inconsistent or incomplete OAuth setting: exit 2 and one line that says what is wrong."""
    result = acme("upstream", "add", "acme", *args, stdin=stdin)
    assert result.status == 2 and message in result.err and result.err.count("\n") == 1, result.err


def test_client_certificate(acme, databaseURL, keyFile, tmp_path):
    """--client-cert and --client-key: stored (the key encrypted), shown by subject and expiry, presented later."""
    ca = makeCA(tmp_path)
    mine = ca.issue(tmp_path, "mail.acme.example", hostnames=["mail.acme.example"], ips=[])
    result = acme(
        "upstream", "add", "acme", "smtp://acme-example.mail.protection.outlook.com", "--client-cert",
        str(mine.chain), "--client-key", str(mine.key),
    )  # fmt: skip
    assert result.status == 0, result.err
    assert "client certificate CN=mail.acme.example, expires " in acme("tenant", "show", "acme").out
    [upstream] = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    assert upstream.url.credentials.clientCertificate.key == Path(mine.key).read_bytes()
    key = Path(mine.key).read_bytes().splitlines()[1]
    assert key not in storedText(databaseURL)


def test_client_certificate_refused(acme, tmp_path):
    """A key that is not the certificate's, or a missing file: exit 2 with the reason."""
    ca = makeCA(tmp_path)
    one = ca.issue(tmp_path, "one", hostnames=["one.example"], ips=[])
    other = ca.issue(tmp_path, "other", hostnames=["other.example"], ips=[])
    url = "smtp://mx.example"
    result = acme("upstream", "add", "acme", url, "--client-cert", str(one.chain), "--client-key", str(other.key))
    assert result.status == 2 and "the client key does not belong to the client certificate" in result.err
    result = acme("upstream", "add", "acme", url, "--client-cert", str(one.chain), "--client-key", "/nonexistent")
    assert result.status == 2 and "cannot read the client certificate or key" in result.err
    result = acme("upstream", "add", "acme", url, "--client-cert", str(one.chain))
    assert result.status == 2 and "--client-cert and --client-key go together" in result.err


def test_secrets_rotate_covers_oauth_and_keys(acme, databaseURL, keyFile, tmp_path):
    """secrets rotate re-encrypts the client secret, refresh token and client key with the new key."""
    ca = makeCA(tmp_path)
    mine = ca.issue(tmp_path, "mail.acme.example", hostnames=["mail.acme.example"], ips=[])
    acme(
        "upstream", "add", "acme", XOAUTH2, "--oauth-provider", "google", "--oauth-client-id", "w",
        "--oauth-client-secret-stdin", "--oauth-refresh-token-stdin", stdin=f"{SECRET}\n{REFRESH}\n",
    )  # fmt: skip
    acme(
        "upstream", "add", "acme", "smtp://mx.example", "--client-cert", str(mine.chain), "--client-key", str(mine.key)
    )
    result = acme("secrets", "rotate", "--drop-old")
    assert result.status == 0 and "3 upstream secrets re-encrypted" in result.out, result.out
    oauth, certificate = snapshot(databaseURL, keyFile).tenants["acme"].upstreams
    assert (oauth.url.credentials.oauth.clientSecret, oauth.url.credentials.oauth.refreshToken) == (SECRET, REFRESH)
    assert certificate.url.credentials.clientCertificate.key == Path(mine.key).read_bytes()
