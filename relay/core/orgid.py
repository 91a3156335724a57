"""
Salesforce organisation ids.

Salesforce record ids come in two forms: 15 case-sensitive characters, and
18 characters where a 3-character suffix encodes the case of the first 15 so
the id survives case-insensitive systems.  Organisation ids start with the
key prefix C{00D}.  The relay keeps the 18-character form.
"""

from __future__ import annotations

import re

__all__ = ["normaliseOrgId"]

ORG_ID_PREFIX = "00D"

_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def _caseSuffix(id15: str) -> str:
    """
    The 3-character suffix of a 15-character id: for each 5-character chunk,
    the character whose index has bit i set when character i is upper case.
    """
    return "".join(
        _SUFFIX_ALPHABET[sum(1 << i for i, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")]
        for start in (0, 5, 10)
    )


def normaliseOrgId(text: str) -> str:
    """
    Check an organisation id and give its 18-character form.

    @param text: a 15- or 18-character id starting with C{00D}; surrounding
        white space is ignored.
    @return: the 18-character id.
    @raise ValueError: it is not an organisation id, or the suffix of an
        18-character id does not match its first 15 characters.
    """
    orgId = text.strip()
    if not _ID.fullmatch(orgId) or not orgId.startswith(ORG_ID_PREFIX):
        raise ValueError(
            f"invalid org id {orgId!r}: expected 15 or 18 letters and digits starting with {ORG_ID_PREFIX!r}"
        )
    suffix = _caseSuffix(orgId[:15])
    if len(orgId) == 18 and orgId[15:] != suffix:
        raise ValueError(f"invalid org id {orgId!r}: the checksum suffix should be {suffix!r}")
    return orgId[:15] + suffix
