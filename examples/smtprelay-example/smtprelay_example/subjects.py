"""
The C{subject-filter} policy: one synchronous verdict and one Deferred one.
"""

from __future__ import annotations

from twisted.internet.task import deferLater

from relay.plugin import CONTINUE, Policy, reject, tempfail


class SubjectFilterPolicy(Policy):
    """
    Looks at the header block only, so it never sees (or slows down) the
    body.  C{[LATER]} stands for a check that has to wait for something,
    such as a lookup in another service: the hook returns a Deferred, and the
    relay's per-hook timeout (C{--policy-timeout}) bounds how long it may take.
    """

    def __init__(self, context):
        super().__init__(context)
        self._reactor = context.reactor  # injected; never import the global reactor

    def headers(self, client, transaction, headers):
        subject = (headers.get("Subject") or [""])[0]
        if subject.startswith("[BLOCK]"):
            return reject(550, "5.7.1", "Subject refused by policy")
        if subject.startswith("[LATER]"):
            return deferLater(self._reactor, 0.01, tempfail, 451, "4.7.1", "Subject held, try again later")
        return CONTINUE
