"""
The DATA scanner: end-of-data detection, un-stuffing and framing checks,
however the stream is split into reads.
"""

import pytest

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


MESSAGE = (
    b"Subject: dots\r\n\r\n"
    b"..leading dot\r\n"
    b"...two\r\n"
    b".\tx\r\n"
    b"mid.dle\r\n"
    b"\r\n"
    b".\r\n"
    b"QUIT\r\n"
)
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
    for chunks in ([stream], [stream[:500], stream[500:]], [stream[:3], stream[3:]]):
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
