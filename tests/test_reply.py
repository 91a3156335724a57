"""
Replies as values: parsing what upstreams send, encoding what we send.
"""

import pytest

from relay.core.reply import Reply


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([b"250 2.1.0 Ok"], Reply(250, "2.1.0", ("Ok",))),
        ([b"250 Ok"], Reply(250, None, ("Ok",))),
        ([b"250"], Reply(250, None, ("",))),
        ([b"354 go ahead"], Reply(354, None, ("go ahead",))),
        ([b"250 3.1.0 not ours"], Reply(250, None, ("3.1.0 not ours",))),
        ([b"250-relay", b"250-PIPELINING", b"250 SIZE 10"], Reply(250, None, ("relay", "PIPELINING", "SIZE 10"))),
        ([b"550-5.1.1 no such", b"550 5.1.1 user"], Reply(550, "5.1.1", ("no such", "user"))),
        ([b"250 caf\xc3\xa9"], Reply(250, None, ("caf??",))),
    ],
)
def test_parse(lines, expected):
    """Codes, enhanced codes (only of the same class) and text are split; 8-bit text is cleaned."""
    assert Reply.parse(lines) == expected


@pytest.mark.parametrize("lines", [[b"HTTP/1.1 400 Bad"], [b"25"], [b"250-a", b"251 b"], [b"199 no"], [b"2500 x"]])
def test_parse_garbage(lines):
    """Anything that is not a reply is refused."""
    with pytest.raises(ValueError):
        Reply.parse(lines)


def test_encode():
    """Multi-line replies use '-' continuations; the enhanced code goes on every line, never on 3xx."""
    assert Reply.of(550, "5.7.1", "a", "b").toBytes() == b"550-5.7.1 a\r\n550 5.7.1 b\r\n"
    assert Reply.of(250, None, "Ok").toBytes() == b"250 2.0.0 Ok\r\n"
    assert Reply.of(250, None, "Ok").toBytes(enhanced=False) == b"250 Ok\r\n"
    assert Reply.of(354, None, "go").toBytes() == b"354 go\r\n"
    assert Reply.of(334, None, "").toBytes() == b"334 \r\n"
