"""Tests for L{relay.core.orgid}."""

from __future__ import annotations

import pytest

from relay.core.orgid import normaliseOrgId


@pytest.mark.parametrize(
    "id15, id18",
    [
        # "00D00" has D at index 2: 0b00100 = 4 -> E; "00000" -> A; "00062" -> A.
        ("00D000000000062", "00D000000000062EAA"),
        # "00Dx0" -> E (x is lower case); "00000" -> A; "0ABCD": bits 1-4 = 30 -> 4.
        ("00Dx0000000ABCD", "00Dx0000000ABCDEA4"),
        # "00DAB": bits 2-4 = 28 -> 2; "CDEFG": 31 -> 5; "hijkl" -> A.
        ("00DABCDEFGhijkl", "00DABCDEFGhijkl25A"),
    ],
)
def test_fifteenToEighteen(id15, id18):
    """A 15-character org id gains its 3-character case checksum."""
    assert normaliseOrgId(id15) == id18


def test_eighteenKept():
    """A correct 18-character org id is returned as it is."""
    assert normaliseOrgId("00Dx0000000ABCDEA4") == "00Dx0000000ABCDEA4"


def test_whiteSpaceIgnored():
    """White space around the id is ignored."""
    assert normaliseOrgId("  00D000000000062\n") == "00D000000000062EAA"


def test_wrongChecksum():
    """An 18-character id whose suffix does not match is refused, naming the right suffix."""
    with pytest.raises(ValueError, match="checksum suffix should be 'EAA'"):
        normaliseOrgId("00D000000000062EAB")


def test_caseMatters():
    """The suffix checks the case of the first 15 characters: a lower-cased id is refused."""
    with pytest.raises(ValueError, match="checksum"):
        normaliseOrgId("00Dx0000000abcdEA4")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00D",
        "00D00000000006",
        "00D0000000000621",
        "00D000000000062EAAA",
        "001000000000062",
        "00d000000000062",
        "00D00000000006!",
        "00D 00000000062",
    ],
)
def test_notAnOrgId(text):
    """Anything but 15 or 18 letters and digits starting with 00D is refused."""
    with pytest.raises(ValueError, match="expected 15 or 18 letters and digits starting with '00D'"):
        normaliseOrgId(text)
