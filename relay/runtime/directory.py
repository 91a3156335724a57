"""
The tenants in memory: relaying a message never waits on the database.

The directory holds a L{Snapshot} of the store and polls the store's
generation counter (one small query, on the store's thread pool); when an
edit (from C{smtprelay-admin} or another instance) changed it, the whole
snapshot is reloaded and swapped in at once.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from relay.core.tenant import Login, Snapshot, Tenant

__all__ = ["Directory"]


class Directory:
    """
    @param store: a L{relay.store.repository.Store} (blocking; only ever
        called on C{threadPool}).
    @param interval: seconds between checks for changes.
    """

    log = Logger()

    def __init__(self, store, reactor, threadPool: ThreadPool, interval: float = 2.0):
        self._store = store
        self._reactor = reactor
        self._pool = threadPool
        self._interval = interval
        self._poller = LoopingCall(self._refresh)
        self._poller.clock = reactor
        self.snapshot = Snapshot(generation=-1)
        self.reachable = True  # the last check of the store succeeded
        self._noAuth: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Tenant]] = []

    def _inThread(self, f, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def start(self) -> None:
        """Poll the store for changes."""
        self._poller.start(self._interval, now=False)

    def stop(self) -> None:
        if self._poller.running:
            self._poller.stop()

    def _load(self) -> Deferred[None]:
        return self._inThread(self._store.loadSnapshot).addCallback(self.swap)

    def swap(self, snapshot: Snapshot) -> None:
        """Use this snapshot from now on."""
        for problem in snapshot.problems:
            self.log.error("store: {problem}", problem=problem)
        self.snapshot = snapshot
        self._noAuth = [
            (network.network, tenant)
            for tenant in snapshot.tenants.values()
            if tenant.active
            for network in tenant.networks
            if network.noAuth
        ]
        self.log.info(
            "tenant directory at generation {generation}: {count} tenants",
            generation=snapshot.generation,
            count=len(snapshot.tenants),
        )

    def _refresh(self) -> Deferred[None]:
        def changed(generation: int) -> Deferred[None]:
            self.reachable = True
            return self._load() if generation != self.snapshot.generation else succeed(None)

        def failed(failure) -> None:
            # A store outage keeps the last snapshot: relaying goes on.
            if self.reachable:
                self.log.failure("tenant store unreachable; relaying with the last snapshot", failure)
            self.reachable = False

        return self._inThread(self._store.generation).addCallback(changed).addErrback(failed)

    def tenant(self, name: str) -> Tenant | None:
        return self.snapshot.tenants.get(name)

    def login(self, username: str) -> Login | None:
        return self.snapshot.logins.get(username)

    def tenantForAddress(self, address: str) -> Tenant | None:
        """The active tenant whose C{--no-auth} network holds this client address."""
        if not self._noAuth:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return next((tenant for network, tenant in self._noAuth if ip in network), None)
