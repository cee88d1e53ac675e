"""Redis fixtures for the state tests (general enough to move to tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.observability.metrics import Metrics
from tests.support import redis as redis_support
from tests.support.redis_topologies import (
    ClusterSetup,
    SentinelSetup,
    start_cluster,
    start_sentinel,
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis shared by the session: the machine's on 6379, or one started for it."""
    with redis_support.redis_url() as url:
        yield url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = redis_support.unique_prefix()
    yield prefix
    redis_support.delete_keys(redis_url, prefix)


@pytest.fixture
def private_redis() -> Iterator[redis_support.RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again."""
    with redis_support.start_private_redis() as server:
        yield server


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create(redis=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterSetup]:
    """A real three-master Redis Cluster of the session's own (tests/support)."""
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSetup]:
    """A real master + replica behind three Sentinels; tests must not kill its master."""
    with start_sentinel() as setup:
        yield setup
