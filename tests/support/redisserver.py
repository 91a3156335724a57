"""
The Redis server the shared-state tests use: C{$SMTPRELAY_TEST_REDIS}
(default L{REDIS}).  Unreachable, its tests are skipped, except under
C{CI=true}, where they fail: CI must test what production runs.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["REDIS", "requireRedis"]

REDIS = os.environ.get("SMTPRELAY_TEST_REDIS", "redis://127.0.0.1:6379/15")


def requireRedis():
    """A redis-py client of the test server, or the test is skipped (failed under CI)."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS, socket_connect_timeout=3)
        client.ping()
        return client
    except redis.RedisError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS} is unreachable ({e}); CI=true: the Redis tests must run", pytrace=False)
        pytest.skip(f"Redis at {REDIS} is unreachable: {e}")
