"""
The DATA scanner: end-of-data detection, un-stuffing and framing checks,
however the stream is split into reads.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.server.dataframe import DataError, DataScanner
from tests.support.smuggling import SMUGGLING

BIG = 10 * 1024 * 1024


def scan(chunks, maxSize=BIG):
    """Feed reads until the end is found; return (content, rest, error)."""
    scanner = DataScanner(maxSize)
    content = []
    for i, chunk in enumerate(chunks):
        data, rest = scanner.feed(chunk)
        content.append(data)
        if rest is not None:
            return b"".join(content), rest + b"".join(chunks[i + 1 :]), scanner.error
    return b"".join(content), None, scanner.error


def everySplit(stream: bytes):
    """The stream cut into two reads at every offset, and into single bytes."""
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]
    yield [stream[i : i + 1] for i in range(len(stream))]


MESSAGE = b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.\tx\r\nmid.dle\r\n\r\n.\r\nQUIT\r\n"
EXPECTED = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n\tx\r\nmid.dle\r\n\r\n"


@pytest.mark.parametrize("chunks", list(everySplit(MESSAGE)))
def test_split_anywhere(chunks):
    """The same content, rest and verdict result wherever the reads are split."""
    assert scan(chunks) == (EXPECTED, b"QUIT\r\n", None)


def test_empty_message():
    """A dot straight after 354 is an empty message."""
    assert scan([b".\r\nNOOP\r\n"]) == (b"", b"NOOP\r\n", None)


def test_lone_dot_split_at_line_start():
    """A dot held back at the start of the stream may still end it."""
    assert scan([b".", b"\r", b"\nX"]) == (b"", b"X", None)


def test_no_end_yet():
    """Bytes that may begin the end marker wait for the next read."""
    scanner = DataScanner(BIG)
    assert scanner.feed(b"abc\r\n.") == (b"abc", None)
    assert scanner.feed(b"x\r\n") == (b"\r\nx", None)
    assert scanner.feed(b"\r\n.\r\n") == (b"\r\n\r\n", b"")


@pytest.mark.parametrize("marker", SMUGGLING)
def test_smuggled_end_markers(marker):
    """
    A lax end-of-data marker followed by a second transaction is refused:
    nothing from the marker on is forwarded and the real end is still found.
    """
    smuggled = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n"
    stream = b"Subject: x\r\n\r\nbody" + marker + smuggled + b".\r\nQUIT\r\n"
    for chunks in everySplit(stream):
        content, rest, error = scan(chunks)
        assert error in (DataError.BARE_LINE_END, DataError.NUL), chunks
        assert rest == b"QUIT\r\n"
        assert b"MAIL FROM" not in content and b"forged" not in content


def test_nul_refused():
    """A NUL byte anywhere in the message is refused."""
    assert scan([b"a\x00b\r\n.\r\n"])[2] is DataError.NUL


@pytest.mark.parametrize("length", [998, 999])
def test_line_length_limit(length):
    """998 octets plus CRLF pass; one more is refused (RFC 5321 §4.5.3.1.6)."""
    line = b"x" * length + b"\r\n"
    stream = b"a\r\n" + line + b"b\r\n.\r\n"
    for chunks in everySplit(stream):
        content, rest, error = scan(chunks)
        assert rest == b""
        if length == 998:
            assert (content, error) == (b"a\r\n" + line + b"b\r\n", None)
        else:
            assert error is DataError.LINE_TOO_LONG
            assert not content.endswith(b"b\r\n")


def test_long_line_inside_a_big_read():
    """A long line between others in one read is found."""
    stream = b"a\r\n" * 400 + b"y" * 1200 + b"\r\n" + b"b\r\n" * 400 + b".\r\n"
    assert scan([stream])[2] is DataError.LINE_TOO_LONG


def test_long_unfinished_line_refused_in_the_read_that_brings_it():
    """A read ending in a line already too long forwards none of it: the fault is seen at once."""
    scanner = DataScanner(BIG)
    assert scanner.feed(b"a\r\n" + b"z" * 2000) == (b"", None)
    assert scanner.error is DataError.LINE_TOO_LONG


def test_megabytes_without_line_end():
    """A runaway line is refused without buffering it."""
    scanner = DataScanner(BIG)
    for _ in range(64):
        assert scanner.feed(b"z" * 65536) == (b"", None)
    assert scanner.error is DataError.LINE_TOO_LONG
    assert scanner.feed(b"\r\n.\r\n") == (b"", b"")


def test_size_limit():
    """Past the size limit nothing more is forwarded, and the end is still found."""
    scanner = DataScanner(100)
    content, rest = scanner.feed(b"x" * 60 + b"\r\n")
    assert (content, rest) == (b"x" * 60, None)
    assert scanner.feed(b"y" * 60 + b"\r\n") == (b"", None)
    assert scanner.feed(b".\r\nQUIT\r\n") == (b"", b"QUIT\r\n")
    assert scanner.error is DataError.TOO_BIG


def reference(stream: bytes, maxSize: int = BIG):
    """
    The scanner's contract, line by line and obviously right: the message
    ends at the first CRLF "." CRLF (or a "." CRLF at the very start); it is
    valid when every CR and LF is part of a CRLF, it has no NUL and no line
    over 1000 octets, and its un-stuffed size fits.
    @return: (content or None if refused, rest)
    """
    if stream.startswith(b".\r\n"):
        return b"", stream[3:]
    end = stream.find(b"\r\n.\r\n")
    body, rest = stream[: end + 2], stream[end + 5 :]
    lines = body.split(b"\r\n")[:-1]  # the body ends with the marker's CRLF
    if any(b"\r" in line or b"\n" in line or b"\0" in line or len(line) + 2 > 1000 for line in lines):
        return None, rest
    content = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return (content if len(content) <= maxSize else None), rest


# Mostly well-formed lines, now and then one with a dot, a NUL, a bare CR or
# LF, or too long (three long pieces make 1,350 octets).
good = st.lists(st.sampled_from([b"a", b".", b"x" * 450]), max_size=4).map(b"".join)
bad = st.sampled_from([b"\0", b"\r", b"\n", b"x" * 1000])
line = st.one_of(good, good, good, st.tuples(good, bad, good).map(b"".join))


@settings(max_examples=500)
@given(
    body=st.lists(line, max_size=8).map(lambda lines: b"".join(line + b"\r\n" for line in lines)),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
    maxSize=st.sampled_from([BIG, 700]),
)
def test_matches_the_line_by_line_reference(body, cuts, maxSize):
    """Random streams cut at random: the fast path refuses, forwards and leaves exactly what the reference does."""
    stream = body + b"\r\n.\r\nRSET\r\n"
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected, expectedRest = reference(stream, maxSize)
    content, rest, error = scan(chunks, maxSize)
    assert rest == expectedRest
    assert (error is None) == (expected is not None)
    if expected is not None:
        assert content == expected
