"""
The maildir upstream type: URL validation, and delivery end to end through a
running relay into a Maildir on the local disk.
"""

from __future__ import annotations

import pytest

from relay.core.urls import UpstreamURL
from relay.upstreams.maildir import MaildirUpstreamType
from tests.support.relay import splitTrace
from tests.test_relay_e2e import MESSAGE


@pytest.mark.parametrize(
    "url, problem",
    [
        ("maildir://host/var/mail/acme", "absolute path"),
        ("maildir:var/mail/acme", "absolute path"),
        ("maildir:///var/mail/acme?timeout=5", "no options or credentials"),
        ("maildir://user@/var/mail/acme", "no options or credentials"),
    ],
)
def test_bad_urls(url, problem):
    """Bad maildir URLs are refused with a reason."""
    with pytest.raises(ValueError, match=problem):
        MaildirUpstreamType().validate(UpstreamURL.parse(url))


def test_good_url():
    """maildir:///absolute/path passes validation."""
    MaildirUpstreamType().validate(UpstreamURL.parse("maildir:///var/mail/acme"))


def test_maildir_delivery(relay, tmp_path, tenantName):
    """The message lands whole in new/ (nothing left in tmp/): Return-Path, trace header, message."""
    maildir = tmp_path / "Maildir"
    account = relay.addTenant(tenantName, f"maildir://{maildir}")
    with relay.connect(account) as client:
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        code, text = client.data(MESSAGE)
    assert code == 250 and text.startswith(b"2.0.0 Ok: delivered as ")
    [delivered] = (maildir / "new").iterdir()
    assert text.split(b" ")[4].decode() == delivered.name
    assert list((maildir / "tmp").iterdir()) == []
    content = delivered.read_bytes()
    assert content.startswith(b"Return-Path: <a@example.com>\r\nReceived: ")
    assert splitTrace(content[len(b"Return-Path: <a@example.com>\r\n") :])[1] == MESSAGE


def test_maildir_unwritable(relay, tmp_path, tenantName):
    """A maildir that cannot be created: 451 4.4.1 at RCPT (MAIL is the relay's), like an unreachable upstream."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    account = relay.addTenant(tenantName, f"maildir://{blocker}/Maildir")
    with relay.connect(account) as client:
        assert client.mail("a@example.com") == (250, b"2.1.0 Ok")
        assert client.rcpt("b@example.net") == (451, b"4.4.1 No upstream available, try again later")


def test_maildir_failover(relay, tmp_path, tenantName):
    """An unusable first maildir: the message goes to the tenant's next upstream."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    maildir = tmp_path / "Maildir"
    account = relay.addTenant(tenantName, f"maildir://{blocker}/Maildir", f"maildir://{maildir}")
    with relay.connect(account) as client:
        assert client.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
    assert len(list((maildir / "new").iterdir())) == 1
