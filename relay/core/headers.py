"""
A message's header block, held while header policies look at it.
"""

from __future__ import annotations

__all__ = ["HeaderBlock", "MAX_HEADER_BLOCK", "splitHeaderBlock"]

MAX_HEADER_BLOCK = 64 * 1024  # held in memory before anything is forwarded (docs/design.md §2)


def splitHeaderBlock(data: bytes | bytearray) -> int:
    """
    Where the header block of C{data} ends.

    @return: the offset just after the empty line that ends the header block
        (C{CRLF CRLF}), or -1 when the block is not complete yet.  A message
        that starts with an empty line has an empty header block (offset 2).
    """
    if data[:2] == b"\r\n":
        return 2
    i = data.find(b"\r\n\r\n")
    return -1 if i < 0 else i + 4


class HeaderBlock:
    """
    The header fields of a message, as received; parsed once, on first use,
    however many policies look.

    @ivar raw: the bytes of the block, including the empty line ending it
        when there was one.
    """

    def __init__(self, raw: bytes):
        self.raw = raw
        self._parsed: tuple[tuple[tuple[str, str], ...], dict[str, list[str]]] | None = None

    def __repr__(self) -> str:
        return f"HeaderBlock({self.raw!r})"

    def fields(self) -> list[tuple[str, str]]:
        """
        Every field as C{(name, value)}, in order, unfolded; the value is
        decoded as Latin-1 so that no byte is lost.
        """
        return list(self._parse()[0])

    def _parse(self) -> tuple[tuple[tuple[str, str], ...], dict[str, list[str]]]:
        if self._parsed is not None:
            return self._parsed
        fields: list[tuple[str, str]] = []
        for line in self.raw.decode("latin-1").split("\r\n"):
            if not line:
                continue
            if line[0] in " \t" and fields:
                name, value = fields[-1]
                fields[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if colon:
                fields.append((name.strip(), value.strip()))
        byName: dict[str, list[str]] = {}
        for name, value in fields:
            byName.setdefault(name.lower(), []).append(value)
        self._parsed = (tuple(fields), byName)
        return self._parsed

    def get(self, name: str) -> list[str]:
        """The values of every field called C{name} (case-insensitive)."""
        return list(self._parse()[1].get(name.lower(), ()))
