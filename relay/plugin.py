"""
The public surface for plugin authors: everything a plugin imports from
smtprelay comes from here (and L{relay.testing} for its tests).  See
C{docs/plugins.md}.

Register plugins in a C{twisted/plugins/} module of your distribution with
L{UpstreamTypePlugin} and L{PolicyPlugin}.
"""

from __future__ import annotations

from relay.core.address import Mailbox
from relay.core.envelope import ClientInfo, Transaction
from relay.core.headers import HeaderBlock
from relay.core.reply import Reply
from relay.core.tenant import Tenant
from relay.core.urls import UpstreamURL
from relay.core.verdict import CONTINUE, Verdict, accept, reject, tempfail
from relay.seams.interfaces import IPolicy, IPolicyFactory, IUpstreamSession, IUpstreamType
from relay.seams.policy import Policy, PolicyContext
from relay.seams.registration import PolicyPlugin, UpstreamTypePlugin
from relay.seams.upstream import UpstreamContext, UpstreamError

__all__ = [
    "CONTINUE",
    "ClientInfo",
    "HeaderBlock",
    "IPolicy",
    "IPolicyFactory",
    "IUpstreamSession",
    "IUpstreamType",
    "Mailbox",
    "Policy",
    "PolicyContext",
    "PolicyPlugin",
    "Reply",
    "Tenant",
    "Transaction",
    "UpstreamContext",
    "UpstreamError",
    "UpstreamTypePlugin",
    "UpstreamURL",
    "Verdict",
    "accept",
    "reject",
    "tempfail",
]
