"""
The relay as a Twisted service: everything one process runs, built from the
command-line options.
"""

from __future__ import annotations

from sqlalchemy import make_url
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from relay.auth.tenants import TenantChecker
from relay.directory import Directory
from relay.policy.chain import PolicyChain
from relay.registry import upstreamTypes
from relay.server.context import ServerContext
from relay.server.protocol import SMTPServerFactory
from relay.store.database import openEngine, requireCurrentSchema
from relay.store.errors import StoreError
from relay.store.repository import Store
from relay.store.secrets import KeyRing
from relay.tls import serverTLSOptions
from relay.upstreams import UpstreamContext
from relay.upstreams.pool import UpstreamPool

__all__ = ["RelayService"]


def _openStore(options) -> Store:
    """The tenant store, checked before anything starts (errors end twistd with a reason)."""
    try:
        engine = openEngine(options["database"])
        requireCurrentSchema(engine)
        return Store(engine, KeyRing.fromFile(options["secret-key-file"]))
    except (StoreError, OSError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
    except Exception as e:  # a driver error: unreachable database, bad URL, ...
        shown = make_url(options["database"]).render_as_string(hide_password=True)
        raise usage.UsageError(f"cannot open the tenant store {shown}: {e}") from None


class RelayService(MultiService):
    """
    Loads the tenants, then listens on every C{--smtp} and C{--smtps}
    endpoint.  The store and password hashing run on a dedicated thread
    pool, never on the reactor thread.
    """

    log = Logger()

    def __init__(self, options, reactor):
        super().__init__()
        self._options = options
        self._reactor = reactor
        self._ports = []
        store = _openStore(options)
        self.threadPool = ThreadPool(minthreads=1, maxthreads=options["store-threads"], name="smtprelay-store")
        self.directory = Directory(store, reactor, self.threadPool, options["refresh-interval"])
        self.directory.swap(store.loadSnapshot())
        try:
            tls = serverTLSOptions(options["tls-cert"], options["tls-key"]) if options["tls-cert"] else None
        except (OSError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        upstreamContext = UpstreamContext(
            reactor=reactor,
            hostname=options["hostname"],
            threadPool=self.threadPool,
            timeout=options["upstream-timeout"],
        )
        self.upstreams = UpstreamPool(
            upstreamTypes(),
            upstreamContext,
            idleTimeout=options["upstream-idle-timeout"],
            maxPerUpstream=options["upstream-max-connections"],
        )
        self.context = ServerContext(
            reactor=reactor,
            hostname=options["hostname"],
            directory=self.directory,
            checker=TenantChecker(self.directory, reactor, self.threadPool),
            policies=PolicyChain([], reactor, options["policy-timeout"]),
            upstreams=self.upstreams,
            tls=tls,
            allowInsecureAuth=options["allow-insecure-auth"],
            maxMessageSize=options["max-message-size"],
            idleTimeout=options["idle-timeout"],
        )

    def _factories(self):
        for description in self._options["smtp"]:
            yield description, SMTPServerFactory(self.context, implicitTLS=False)
        for description in self._options["smtps"]:
            factory = SMTPServerFactory(self.context, implicitTLS=True)
            if not description.startswith("ssl:"):
                factory = TLSMemoryBIOFactory(self.context.tls, False, factory)
            yield description, factory

    def startService(self) -> None:
        super().startService()
        self.threadPool.start()
        self.directory.start()
        for description, factory in self._factories():
            d = serverFromString(self._reactor, description).listen(factory)
            d.addCallback(self._listening, description)
            d.addErrback(self._cannotListen, description)

    def _listening(self, port, description: str) -> None:
        self._ports.append(port)
        self.log.info("smtprelay listening on {description}", description=description)

    def _cannotListen(self, failure, description: str) -> None:
        self.log.critical("cannot listen on {description}: {error}", description=description, error=failure.value)
        self._reactor.stop()

    def stopService(self):
        super().stopService()
        self.directory.stop()
        stopping = [port.stopListening() for port in self._ports]
        stopping.append(self.upstreams.closeIdle())
        d = DeferredList(stopping)
        d.addBoth(lambda _: self.threadPool.stop())
        return d
