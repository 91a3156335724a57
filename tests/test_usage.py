"""
Tests for usage accounting: L{relay.store.repository.Store.recordUsage},
L{relay.store.repository.Store.usage} and C{smtprelay-admin usage}.
"""

from __future__ import annotations

import json
import threading
from datetime import date

import pytest

from relay.store.database import openEngine
from relay.store.errors import Invalid, NotFound
from relay.store.repository import Store
from relay.store.secrets import KeyRing
from relay.store.values import UsageDelta, UsageRow
from tests.adminfixtures import keyFile, run  # noqa: F401
from tests.storefixtures import acme, databaseURL, engine, freshEngine, keyRing, postgresqlDatabase, store  # noqa: F401  # noqa: F401

MONDAY = date(2025, 3, 3)
TUESDAY = date(2025, 3, 4)


@pytest.fixture
def globex(acme):
    """The store with the tenants acme and globex."""
    acme.addTenant("globex", "ops@globex.example", "Globex")
    return acme


def test_recordAddsUp(acme):
    """Deltas add up, within a batch and across batches, per tenant and day."""
    acme.recordUsage([UsageDelta("acme", MONDAY, relayed=1, recipients=3, bytes=1000)])
    acme.recordUsage(
        [
            UsageDelta("acme", MONDAY, relayed=2, recipients=2, bytes=500, rejected=1),
            UsageDelta("acme", MONDAY, failed=4),
            UsageDelta("acme", TUESDAY, relayed=1, recipients=1, bytes=10),
        ]
    )
    assert acme.usage() == [
        UsageRow("acme", MONDAY, relayed=3, recipients=5, bytes=1500, rejected=1, failed=4),
        UsageRow("acme", TUESDAY, relayed=1, recipients=1, bytes=10),
    ]


def test_recordLeavesGeneration(acme):
    """Usage is not configuration: recording it does not increment the generation."""
    before = acme.generation()
    acme.recordUsage([UsageDelta("acme", MONDAY, relayed=1)])
    acme.recordUsage([])
    assert acme.generation() == before


def test_recordSkipsUnknownTenants(acme):
    """The deltas of a tenant deleted meanwhile are skipped; the others are recorded."""
    acme.recordUsage([UsageDelta("gone", MONDAY, relayed=5), UsageDelta("acme", MONDAY, relayed=1)])
    assert acme.usage() == [UsageRow("acme", MONDAY, relayed=1)]


def test_recordNegative(acme):
    """A negative count is refused and nothing of the batch is recorded."""
    with pytest.raises(Invalid, match="^negative usage "):
        acme.recordUsage([UsageDelta("acme", MONDAY, relayed=1), UsageDelta("acme", TUESDAY, bytes=-1)])
    assert acme.usage() == []


def test_recordConcurrently(globex, engine, keyRing):
    """Batches written at once by several instances all count."""
    stores = [Store(engine, keyRing) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors = []

    def write(store: Store) -> None:
        barrier.wait()
        try:
            for _ in range(5):
                store.recordUsage(
                    [UsageDelta("globex", MONDAY, relayed=1, bytes=7), UsageDelta("acme", MONDAY, relayed=1)]
                )
        except Exception as e:  # reported below: an assertion in a thread would go unseen
            errors.append(e)

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert globex.usage() == [UsageRow("acme", MONDAY, relayed=20), UsageRow("globex", MONDAY, relayed=20, bytes=140)]


def test_usageFilters(globex):
    """usage() reads one tenant's rows, or those from a day on, by tenant and day."""
    globex.recordUsage(
        [
            UsageDelta("globex", TUESDAY, relayed=2),
            UsageDelta("acme", TUESDAY, relayed=1),
            UsageDelta("acme", MONDAY, relayed=3),
        ]
    )
    assert [(row.tenant, row.day) for row in globex.usage()] == [
        ("acme", MONDAY), ("acme", TUESDAY), ("globex", TUESDAY)
    ]  # fmt: skip
    assert globex.usage("globex") == [UsageRow("globex", TUESDAY, relayed=2)]
    assert globex.usage(since=TUESDAY) == [UsageRow("acme", TUESDAY, relayed=1), UsageRow("globex", TUESDAY, relayed=2)]
    assert globex.usage("acme", since=date(2025, 3, 5)) == []


def test_usageUnknownTenant(store):
    """Usage of an unknown tenant names it."""
    with pytest.raises(NotFound, match="^unknown tenant 'nope'$"):
        store.usage("nope")


# smtprelay-admin usage


@pytest.fixture
def recorded(run, databaseURL, keyFile):
    """Two tenants with usage on two days; C{run} for the commands."""
    run("db", "upgrade")
    run("tenant", "add", "acme", "--email", "ops@acme.example", "--company", "Acme")
    run("tenant", "add", "globex", "--email", "ops@globex.example", "--company", "Globex")
    engine = openEngine(databaseURL)
    Store(engine, KeyRing.fromFile(keyFile)).recordUsage(
        [
            UsageDelta("acme", MONDAY, relayed=10, recipients=12, bytes=123456, rejected=1),
            UsageDelta("acme", TUESDAY, relayed=5, recipients=5, bytes=1000, failed=2),
            UsageDelta("globex", TUESDAY, relayed=1, recipients=1, bytes=99),
        ]
    )
    engine.dispose()
    return run


def test_usageTable(recorded):
    """usage prints a row per tenant and day, and a total per tenant, numbers right-aligned."""
    result = recorded("usage")
    assert (result.status, result.err) == (0, "")
    assert result.out.splitlines() == [
        "TENANT  DAY         RELAYED  RECIPIENTS   BYTES  REJECTED  FAILED",
        "acme    2025-03-03       10          12  123456         1       0",
        "acme    2025-03-04        5           5    1000         0       2",
        "acme    total            15          17  124456         1       2",
        "globex  2025-03-04        1           1      99         0       0",
        "globex  total             1           1      99         0       0",
    ]


def test_usageOneTenantSince(recorded):
    """usage TENANT --since DAY prints that tenant's rows from that day on."""
    lines = recorded("usage", "acme", "--since", "2025-03-04").out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["TENANT", "DAY", "RELAYED"], ["acme", "2025-03-04", "5"], ["acme", "total", "5"]
    ]  # fmt: skip


def test_usageJSON(recorded):
    """usage --json gives the rows with ISO days."""
    rows = json.loads(recorded("usage", "globex", "--json").out)
    assert rows == [
        {
            "tenant": "globex",
            "day": "2025-03-04",
            "relayed": 1,
            "recipients": 1,
            "bytes": 99,
            "rejected": 0,
            "failed": 0,
        }
    ]


def test_usageNone(recorded):
    """With no usage to show, usage says so."""
    assert recorded("usage", "--since", "2026-01-01").out == "no usage recorded\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown tenant 'nope'"),
        (["--since", "2025-02-30"], "--since: expected a day as YYYY-MM-DD, not '2025-02-30'"),
        (["--since", "yesterday"], "--since: expected a day as YYYY-MM-DD, not 'yesterday'"),
    ],
)
def test_usageRefused(recorded, args, message):
    """An unknown tenant or a bad day gives status 2 and one line."""
    result = recorded("usage", *args)
    assert (result.status, result.out, result.error) == (2, "", message)
