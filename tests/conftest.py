"""
Fixtures shared by the end-to-end tests: a test CA, a running relay and
upstream servers on loopback.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings

from tests.support.certs import makeCA
from tests.support.relay import RelayProcess
from tests.support.upstream import UpstreamServer

settings.register_profile("default", max_examples=40)
settings.register_profile("long", max_examples=1000)
settings.load_profile("default")

_names = itertools.count(1)


@pytest.fixture(scope="session")
def ca(tmp_path_factory):
    """A throwaway CA: it signs the relay's and the upstreams' certificates."""
    return makeCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def upstreamCert(ca, tmp_path_factory):
    return ca.issue(tmp_path_factory.mktemp("upstream"), "upstream")


@pytest.fixture(scope="session")
def relay(ca, tmp_path_factory):
    """One relay for the session; each test adds tenants of its own."""
    process = RelayProcess(tmp_path_factory.mktemp("relay"), ca)
    yield process
    process.stop()


@pytest.fixture
def tenantName():
    """A tenant name no other test uses."""
    return f"t{next(_names)}"


@pytest.fixture
def upstream(upstreamCert):
    """An upstream SMTP server offering STARTTLS with a certificate from the test CA."""
    with UpstreamServer(tls=upstreamCert) as server:
        yield server
