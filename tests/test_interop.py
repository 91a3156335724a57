"""
Interoperability with real MTAs on both sides, all on loopback:

    smtplib → Postfix (client: relayhost = the relay, SASL, TLS encrypt)
            → smtprelay
            → Postfix (upstream: STARTTLS + SASL via saslpasswd2, CHUNKING)
            → the recording test server (SMTPUTF8, DSN)

UTF-8 mail (a UTF-8 subject, and a UTF-8 address), DSN parameters and a
body of stuffed dots and 998-octet lines go through every hop; Dovecot's
LMTP as an upstream gets one recipient per transaction and answers an
over-quota mailbox for that recipient alone.  Debian's postfix, sasl2-bin
and dovecot-lmtpd are installed by .ci/run.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import time

import pytest

from tests.support.dovecot import Dovecot
from tests.support.postfix import Postfix, postfixAvailable, requireAuth
from tests.support.relay import freePort
from tests.support.upstream import UpstreamServer

UPSTREAM_USER, UPSTREAM_PASSWORD = "relayuser", "upstream-secret"
REALM = "upstream.test"
BODY = b".leading dot\r\n..two\r\n.\r\n" + (b"z" * 998 + b"\r\n") * 3 + b"end\r\n"


def require(program: str) -> None:
    if shutil.which(program) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{program} is not installed; CI=true: .ci/run installs it", pytrace=False)
        pytest.skip(f"{program} is not installed")


def waitFor(predicate, what: str, timeout: float = 30.0, poke=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        if poke is not None:
            poke()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def chain(relay, ca, tmp_path_factory):
    """Postfix → the relay → Postfix → the test server, with a tenant for the client Postfix."""
    require("postfix")
    require("saslpasswd2")
    assert postfixAvailable()
    with UpstreamServer(extensions=("SMTPUTF8", "DSN")) as sink:
        upstream = _upstreamPostfix(ca, sink.port)
        with upstream:
            account = relay.addTenant(
                "interop",
                f"smtp+starttls://{UPSTREAM_USER}%40{REALM}:{UPSTREAM_PASSWORD}@127.0.0.1:{upstream.port}?ca={ca.cert}",
                domains=("example.com",),
            )
            client = _clientPostfix(ca, relay.port, account)
            with client:
                yield client, sink, upstream


def _upstreamPostfix(ca, sinkPort: int) -> Postfix:
    postfix = Postfix("upstream", freePort())
    cert = ca.issue(postfix.directory, "postfix-upstream", hostnames=["localhost"], ips=["127.0.0.1"])
    requireAuth(postfix, cert.chain, cert.key, {UPSTREAM_USER: UPSTREAM_PASSWORD}, REALM)
    postfix.settings.update(
        {
            "myhostname": "postfix-upstream.test",
            "relayhost": f"[127.0.0.1]:{sinkPort}",
            "smtp_tls_security_level": "none",
            "debug_peer_list": "127.0.0.1",  # logs the relay's commands: BDAT shows CHUNKING in use
        }
    )
    return postfix


def _clientPostfix(ca, relayPort: int, account) -> Postfix:
    postfix = Postfix("client", freePort())
    caFile = postfix.directory / "ca.pem"
    shutil.copy(ca.cert, caFile)  # where the postfix user can read it
    postfix.files["relay_passwords"] = f"[127.0.0.1]:{relayPort} {account.username}:{account.password}\n"
    postfix.settings.update(
        {
            "myhostname": "postfix-client.test",
            "relayhost": f"[127.0.0.1]:{relayPort}",
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"texthash:{postfix.config / 'relay_passwords'}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
            "smtp_sasl_mechanism_filter": "plain, login",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": caFile,
        }
    )
    return postfix


def submit(
    postfix: Postfix, sender: str, recipients: list[str], message: bytes, mailOptions=(), rcptOptions=()
) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        client.ehlo("submitter.test")
        client.mail(sender, list(mailOptions))
        for recipient in recipients:
            code, text = client.rcpt(recipient, list(rcptOptions))
            assert code == 250, (code, text)
        code, text = client.data(message)
        assert code == 250, (code, text)


def arrived(sink: UpstreamServer, marker: bytes):
    """The message carrying C{marker} at the end of the chain, once it is there."""
    found = []

    def there() -> bool:
        found[:] = [m for m in sink.messages if marker in m.data]
        return bool(found)

    return there, found


def test_utf8_subject_through_postfix_both_sides(chain):
    """A UTF-8 subject (8-bit, SMTPUTF8) crosses Postfix, the relay and Postfix, its body byte-identical."""
    client, sink, upstream = chain
    message = "From: a@example.com\r\nSubject: Grüße aus Köln ✓\r\nX-Marker: utf8-subject\r\n\r\n".encode() + BODY
    submit(client, "a@example.com", ["b@example.net"], message, mailOptions=["SMTPUTF8", "BODY=8BITMIME"])
    there, found = arrived(sink, b"utf8-subject")
    waitFor(there, "the UTF-8 subject message at the end of the chain", poke=client.flush)
    [got] = found
    assert "Subject: Grüße aus Köln ✓".encode() in got.data
    assert got.data.endswith(b"\r\n\r\n" + BODY)
    assert "smtprelay" in got.data.decode("utf-8", "replace")  # our Received: line is in the trace
    assert re.search(r": BDAT \d+ LAST$", upstream.maillog(), re.M), "the relay used CHUNKING into Postfix"


def test_utf8_address_through_postfix_both_sides(chain):
    """A UTF-8 address goes through with SMTPUTF8 at every hop."""
    client, sink, _ = chain
    message = b"From: a@example.com\r\nSubject: to a UTF-8 address\r\nX-Marker: utf8-address\r\n\r\nhello\r\n"
    submit(client, "a@example.com", ["jösé@bücher.example"], message, mailOptions=["SMTPUTF8"])
    there, found = arrived(sink, b"utf8-address")
    waitFor(there, "the message to a UTF-8 address", poke=client.flush)
    [got] = found
    assert got.recipients == ("jösé@bücher.example",) and "SMTPUTF8" in got.mailOptions


def test_dsn_through_postfix_both_sides(chain):
    """RET, ENVID, NOTIFY and ORCPT arrive at the end of the chain unchanged."""
    client, sink, _ = chain
    message = b"From: a@example.com\r\nSubject: dsn\r\nX-Marker: dsn-parameters\r\n\r\nhello\r\n"
    mailOptions = ["RET=HDRS", "ENVID=interop42"]
    rcptOptions = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;c@example.net"]
    submit(client, "a@example.com", ["c@example.net"], message, mailOptions=mailOptions, rcptOptions=rcptOptions)
    there, found = arrived(sink, b"dsn-parameters")
    waitFor(there, "the message with DSN parameters", poke=client.flush)
    [got] = found
    assert {"RET=HDRS", "ENVID=interop42"} <= set(got.mailOptions)
    assert {"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;c@example.net"} <= set(got.rcptOptions[0])


@pytest.fixture(scope="module")
def dovecot():
    require("dovecot")
    with Dovecot(freePort(), {"alice": "100M", "bob": "100M", "full": "1"}) as server:
        yield server


def test_dovecot_lmtp_one_recipient_per_transaction(relay, dovecot):
    """
    Dovecot's LMTP as upstream: the second RCPT waits for its own
    transaction (452 4.5.3), and the over-quota mailbox's 552 reaches the
    client for that transaction alone; alice's copy is reported delivered.
    """
    account = relay.addTenant("dovecot-one", f"lmtp://127.0.0.1:{dovecot.port}")
    message = b"From: a@example.com\r\nSubject: quota\r\n\r\n" + (b"q" * 78 + b"\r\n") * 50
    with relay.connect(account) as client:
        client.mail("a@example.com")
        assert client.rcpt("alice@example.net")[0] == 250
        code, text = client.rcpt("full@example.net")
        assert (code, text[:5]) == (452, b"4.5.3")
        code, text = client.data(message)
        assert code == 250 and text.startswith(b"2.0.0 <alice@example.net>"), text
        client.mail("a@example.com")
        assert client.rcpt("full@example.net")[0] == 250
        code, text = client.data(message)
        assert code == 552 and text.startswith(b"5.2.2 <full@example.net> Quota exceeded"), text
    [copy] = dovecot.delivered("alice")
    assert copy.endswith(message.replace(b"\r\n", b"\n"))  # Dovecot's Maildir keeps LF line ends
    assert dovecot.delivered("full") == []


def test_dovecot_lmtp_many_recipients(relay, dovecot):
    """
    ?recipients=many: one transaction for all; every recipient delivered is
    a 250, and a mixed outcome (bob delivered, full over quota) is a 451 so
    the client neither bounces bob's delivered copy nor loses full's.
    """
    account = relay.addTenant("dovecot-many", f"lmtp://127.0.0.1:{dovecot.port}?recipients=many")
    message = b"From: a@example.com\r\nSubject: many\r\n\r\n" + (b"m" * 78 + b"\r\n") * 50
    with relay.connect(account) as client:
        client.mail("a@example.com")
        assert client.rcpt("alice@example.net")[0] == 250
        assert client.rcpt("bob@example.net")[0] == 250
        code, text = client.data(message)
        assert code == 250, text
        client.mail("a@example.com")
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.rcpt("full@example.net")[0] == 250
        code, text = client.data(message)
        assert code == 451 and text.startswith(b"4.5.0 Delivered to some recipients only"), text
    assert [m.endswith(message.replace(b"\r\n", b"\n")) for m in dovecot.delivered("bob")] == [True, True]
    assert dovecot.delivered("full") == []
