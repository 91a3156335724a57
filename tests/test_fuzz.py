"""
Property-based fuzzing against a live relay and a recording upstream:
random interleavings of valid and invalid commands and messages, sent in
random TCP fragments.  Whatever happens, every command line gets exactly one
reply, the upstream receives exactly the messages the client got 250 for,
byte for byte, and the relay logs no unhandled error.

40 examples by default; more with C{pytest --hypothesis-profile=long}.
"""

from __future__ import annotations

import itertools
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.raw import RawClient
from tests.support.relay import splitTrace, upstreamURL

VALID_COMMANDS = [
    b"NOOP",
    b"RSET",
    b"EHLO fuzz.test",
    b"HELO fuzz.test",
    b"VRFY someone",
    b"HELP",
    b"MAIL FROM:<a@example.com>",
    b"mail from:<a@EXAMPLE.com> BODY=8BITMIME",
    b"RCPT TO:<b@example.net>",
    b"RCPT TO:<c@example.org>",
]
INVALID_COMMANDS = [
    b"FOO",
    b"MAIL FROM:a@example.com",
    b"MAIL FROM:<a@example.com> SIZE=abc",
    b"MAIL FROM:<a@evil.example>",
    b"RCPT TO:<>",
    b"RCPT TO:<x%y@example.net>",
    b"RCPT TO:<@route.example:b@example.net>",
    b"DATA extra",
    b"AUTH LOGIN",
    b"STARTTLS",
    b"NOOP " + b"x" * 600,
    b"\x00\x01junk",
    b"",
]
printable = st.binary(min_size=0, max_size=60).map(lambda b: bytes(c % 94 + 33 for c in b))
command = st.one_of(st.sampled_from(VALID_COMMANDS), st.sampled_from(INVALID_COMMANDS), printable)
bodyLine = st.one_of(
    printable,
    printable.map(lambda b: b"." + b),
    st.just(b"."),
    st.just(b".."),
    st.just(b""),
    st.just(b"x" * 998),
)


@st.composite
def message(draw) -> tuple[bytes, bool]:
    """A message (un-stuffed) and whether its framing is valid."""
    lines = [b"From: a@example.com", b"Subject: fuzz", b""] + draw(st.lists(bodyLine, max_size=12))
    body = b"".join(line + b"\r\n" for line in lines)
    fault = draw(st.sampled_from([None, None, None, b"\n", b"\r", b"\x00", b"y" * 1100]))
    if fault is None:
        return body, True
    # Anywhere but inside the final CRLF: without it the client's end marker would not be one.
    at = draw(st.integers(min_value=len(lines[0]) + 2, max_value=len(body) - 2))
    return body[:at] + fault + body[at:], False


def stuff(body: bytes) -> bytes:
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n"))


step = st.one_of(
    st.lists(command, min_size=1, max_size=6).map(lambda lines: ("commands", lines)),
    message().map(lambda m: ("message", m)),
)


def fragments(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


class Session:
    """One fuzzed client session and what it expects."""

    def __init__(self, client: RawClient, cuts: list[int]):
        self.client = client
        self.cuts = cuts
        self.relayed: list[bytes] = []
        self.open = True

    def send(self, data: bytes) -> None:
        for piece in fragments(data, self.cuts):
            self.client.send(piece)
            time.sleep(0.0005)

    def replies(self, count: int) -> list[str]:
        """Exactly one reply per line sent; 421 (or QUIT's 221) closes the session deliberately."""
        replies = []
        for _ in range(count):
            reply = self.client.reply()
            lines = reply.split("\n")
            assert all(line[:3] == lines[0][:3] and line[:3].isdigit() for line in lines), reply
            assert lines[-1][3:4] == " " and all(line[3:4] == "-" for line in lines[:-1]), reply
            replies.append(reply)
            if reply.startswith(("421", "221")):
                self.open = False
                assert self.client.closed()
                break
        return replies

    def commands(self, lines: list[bytes]) -> None:
        self.send(b"".join(line + b"\r\n" for line in lines))
        self.replies(len(lines))

    def message(self, body: bytes, valid: bool) -> None:
        self.send(b"RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
        replies = self.replies(3)
        if not self.open:  # too many errors earlier: 421, closed on purpose
            return
        assert [r[:3] for r in replies] == ["250"] * 3
        self.send(b"DATA\r\n")
        [reply] = self.replies(1)
        assert reply.startswith("354"), reply
        self.send(stuff(body) + b".\r\n")
        [final] = self.replies(1)
        if valid:
            assert final.startswith("250 2.0.0"), final
            self.relayed.append(body)
        else:
            assert final.startswith("550 5.6.0"), final


@pytest.fixture(scope="module")
def target(relay, upstreamCert, tmp_path_factory):
    from tests.support.upstream import UpstreamServer

    with UpstreamServer(tls=upstreamCert) as up:
        account = relay.addTenant("fuzz", upstreamURL(up, ca=str(relay.ca.cert)))
        yield relay, up, account


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_fuzzed_sessions(target, steps, cuts):
    """Any mix of commands and messages in any fragmentation: one reply each, nothing lost or invented."""
    relay, upstream, account = target
    before = len(upstream.messages)
    client = RawClient(relay.port, relay.clientContext())
    try:
        client.login(account.username, account.password)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(client, cuts)
        for kind, value in steps:
            if not session.open:
                break
            if kind == "commands":
                session.commands(value)
            else:
                session.message(*value)
        if session.open:
            session.commands([b"QUIT"])
    finally:
        client.close()
    received = upstream.waitForMessages(before + len(session.relayed))[before:]
    assert len(received) == len(session.relayed)
    assert [splitTrace(got.data)[1] for got in received] == session.relayed
    assert "Traceback" not in relay.log() and "Unhandled" not in relay.log()
