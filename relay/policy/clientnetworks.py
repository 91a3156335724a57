"""
Client networks: a tenant that lists networks (other than C{--no-auth}
ones) accepts AUTH only from them; a correct password from elsewhere fails
like a wrong one (C{535 5.7.8}), and is logged as such.
"""

from __future__ import annotations

import ipaddress

from twisted.logger import Logger

from relay.core.logtext import logText
from relay.plugin import CONTINUE, Policy, reject

__all__ = ["ClientNetworkPolicy"]


class ClientNetworkPolicy(Policy):
    """AUTH only from the tenant's networks, when it lists any."""

    log = Logger()

    def auth(self, client, login):
        restricted = [n.network for n in client.tenant.networks if not n.noAuth]
        if not restricted:
            return CONTINUE
        try:
            address = ipaddress.ip_address(client.address)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in restricted):
            return CONTINUE
        self.log.warn(
            "correct password for {login} from {ip}, outside the networks of tenant {tenant}",
            login=logText(login),
            ip=client.address,
            tenant=client.tenant.name,
        )
        return reject(535, "5.7.8", "Authentication credentials invalid")
