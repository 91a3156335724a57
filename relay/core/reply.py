"""
SMTP replies as values.

A L{Reply} is what one side of an SMTP conversation says to the other: a
three-digit code, an RFC 3463 enhanced status code and one or more lines of
text.  The relay mirrors upstream replies to its client, so the same type is
used for replies it receives and replies it sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_SIMPLE = re.compile(rb"([2-5][0-9][0-9])(?: (?:([2-5]\.[0-9]{1,3}\.[0-9]{1,3}) )?([\x20-\x7e]*))?")


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One SMTP reply.

    @ivar code: the three-digit reply code, C{250}, C{451}, ...
    @ivar enhanced: the RFC 3463 enhanced status code such as C{"2.0.0"}; when
        C{None} a generic one matching the code's class is sent.
    @ivar lines: the text, one string per reply line (at least one).
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        """
        Build a reply, cleaning the text of anything that is not printable
        ASCII (upstream servers are not trusted to send clean text).
        """
        return cls(code, enhanced, tuple(_UNPRINTABLE.sub("?", line) for line in lines or ("",)))

    @classmethod
    def parse(cls, lines: list[bytes]) -> Reply:
        """
        Build a reply from the raw lines an SMTP server sent (without CRLF),
        splitting off the enhanced status code when the server gave one.

        @raise ValueError: the lines are not a well-formed reply.
        """
        if len(lines) == 1:
            simple = _SIMPLE.fullmatch(lines[0])
            if simple is not None:  # the usual "250 2.1.0 Ok": no loop, no cleaning
                code, enhanced, text = simple.groups()
                if enhanced is None or enhanced[:1] == code[:1]:
                    return cls(int(code), enhanced.decode() if enhanced else None, ((text or b"").decode(),))
        code = None
        texts = []
        enhanced = None
        for raw in lines:
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b" ", b"-", b""):
                raise ValueError(f"malformed reply line {raw[:40]!r}")
            if code is None:
                code = int(raw[:3])
            elif int(raw[:3]) != code:
                raise ValueError("reply lines disagree on the code")
            text = raw[4:].decode("ascii", "replace")
            first, _, rest = text.partition(" ")
            if _ENHANCED.match(first) and first[0] == str(code)[0]:
                enhanced = enhanced or first
                text = rest
            texts.append(text)
        if code is None or not 200 <= code <= 599:
            raise ValueError("no reply code")
        return cls.of(code, enhanced, *texts)

    @property
    def positive(self) -> bool:
        """C{True} for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def transient(self) -> bool:
        """C{True} for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def text(self) -> str:
        """All lines joined with a space, for logs."""
        return " ".join(self.lines)

    @property
    def summary(self) -> str:
        """Code, enhanced code and text on one line (C{535 5.7.3 Authentication unsuccessful}), for messages."""
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text) if part)

    def withText(self, *lines: str) -> Reply:
        """This reply's code and enhanced code with other text."""
        return Reply.of(self.code, self.enhanced, *lines)

    def toBytes(self, enhanced: bool = True) -> bytes:
        """
        Encode for the wire, with CRLF after every line.

        @param enhanced: include the enhanced status code (3xx replies never
            have one); the greeting and the answer to EHLO or HELO go
            without (RFC 2034 §3).
        """
        prefix = f"{self.code:03d}"
        status = ""
        if enhanced and self.code // 100 != 3:
            status = (self.enhanced or f"{self.code // 100}.0.0") + " "
        last = len(self.lines) - 1
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            out.append(f"{prefix}{sep}{status}{line}\r\n")
        return "".join(out).encode("ascii")
