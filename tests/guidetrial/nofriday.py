"""The no-friday policy: refuse messages whose Subject mentions Friday."""

from __future__ import annotations

from relay.plugin import CONTINUE, Policy, reject


class NoFridayPolicy(Policy):
    def headers(self, client, transaction, headers):
        if any("friday" in subject.lower() for subject in headers.get("Subject")):
            return reject(550, "5.7.1", "No mail about Friday")
        return CONTINUE
