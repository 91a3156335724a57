"""
The DATA fast path: finding the end of a message in raw reads and checking
its framing without a Python call per line.

SMTP frames a message as CRLF-terminated lines ended by C{CRLF . CRLF}, with
a leading dot doubled on any line that begins with one (RFC 5321 §4.5.2).
Lax framing is what SMTP smuggling exploits (CVE-2023-51764): a bare CR or
LF, or a NUL, is never a line end here; such a message is refused after the
real end of data and none of it is forwarded past the point where the fault
was seen.
"""

from __future__ import annotations

import enum

__all__ = ["DataError", "DataScanner", "MAX_TEXT_LINE"]

MAX_TEXT_LINE = 1000  # octets including CRLF, RFC 5321 §4.5.3.1.6
_END = b"\r\n.\r\n"
_DOT_LINE = b"\r\n."  # starts the end marker and every stuffed line


class DataError(enum.Enum):
    """Why a message's framing is refused."""

    BARE_LINE_END = "bare CR or LF"
    NUL = "NUL character"
    LINE_TOO_LONG = "line longer than 1000 octets"
    TOO_BIG = "message too big"


def _heldLength(buf: bytes, lineStart: bool) -> int:
    """
    How many trailing bytes of C{buf} could be the start of the end marker
    and must wait for the next read.
    """
    if lineStart and buf in (b".", b".\r"):
        return len(buf)
    for n in (4, 3, 2, 1):
        if buf.endswith(_END[:n]):
            return n
    return 0


class DataScanner:
    """
    Scans one message's DATA stream, read by read.

    Feed it whatever the transport delivers; it returns the message bytes
    that are safe to forward (un-dot-stuffed, at most the last 4 bytes held
    back until the next read decides whether they start the end marker) and,
    once the end marker is seen, the bytes that followed it.

    @ivar error: the first L{DataError} seen, or C{None}.  Once set, nothing
        more is returned as content; the scanner only looks for the end.
    @ivar size: message octets accepted so far (after un-stuffing).
    """

    def __init__(self, maxSize: int) -> None:
        self._maxSize = maxSize
        self._held = b""
        self._lineStart = True  # nothing consumed yet: the stream begins a line
        self._lineLength = 0  # octets of the unfinished line so far
        self.error: DataError | None = None
        self.size = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        Take one read.

        @return: C{(content, rest)}: C{content} is message bytes to forward
            (possibly empty); C{rest} is C{None} while the end has not been
            seen, else the bytes after the end marker (pipelined commands).
        """
        buf = self._held + data if self._held else data
        lineStart = self._lineStart
        rest = None
        # Both the end marker and a stuffed dot begin with CRLF ".": one
        # search rules out the two in the usual read, which has neither.
        dotted = buf.find(_DOT_LINE) >= 0
        if lineStart and buf[:3] == b".\r\n":
            segment, rest = b"", buf[3:]
        else:
            i = buf.find(_END) if dotted else -1
            if i >= 0:
                segment, rest = buf[: i + 2], buf[i + 5 :]
            else:
                hold = _heldLength(buf, lineStart)
                segment = buf[: len(buf) - hold] if hold else buf
                self._held = buf[len(buf) - hold :] if hold else b""
        if rest is not None:
            self._held = b""
        if segment:
            # A line end is CRLF, and a trailing CRLF is always held back, so
            # after any segment the next read never starts a line: a bare LF
            # before "." must not make it an end marker.
            self._lineStart = False
        if self.error is not None or not segment:
            return b"", rest
        self._check(segment)
        if self.error is not None:
            return b"", rest
        if lineStart and segment[:1] == b".":
            segment = segment[1:]
        content = segment.replace(_DOT_LINE, b"\r\n") if dotted else segment
        self.size += len(content)
        if self.size > self._maxSize:
            self.error = DataError.TOO_BIG
            return b"", rest
        return content, rest

    def _check(self, segment: bytes) -> None:
        """
        Framing of a segment, which never splits a CRLF (a trailing CR is
        held back): every CR and LF must be part of a CRLF, no NUL, no line
        over 1000 octets.  Built on one C{split}, the fastest pass over the
        bytes that pure Python has; no Python code runs per line.
        """
        lines = segment.split(b"\r\n")
        joined = b"".join(lines)
        if b"\r" in joined or b"\n" in joined:
            self.error = DataError.BARE_LINE_END
        elif b"\0" in joined:
            self.error = DataError.NUL
        elif self._longestLine(lines) > MAX_TEXT_LINE:
            self.error = DataError.LINE_TOO_LONG

    def _longestLine(self, lines: list[bytes]) -> int:
        """
        The longest line, counting CRLF, among the C{lines} of a segment
        (split at CRLF; the last one is unfinished and counts its CRLF to
        come).  Updates the running length of the unfinished line.
        """
        if len(lines) == 1:
            self._lineLength += len(lines[0])
            return self._lineLength + 2
        longest = self._lineLength + len(lines[0])
        if len(lines) > 2:
            longest = max(longest, max(map(len, lines[1:-1])))
        self._lineLength = len(lines[-1])
        return max(longest, self._lineLength) + 2
