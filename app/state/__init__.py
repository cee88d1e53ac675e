"""Shared state: the token cache, single-flight, rate limits, and the Redis connection.

Every piece works in-process by default; with ``BROKER_REDIS_URL`` the cache and the
limits are shared through Redis and fall back to the in-process versions while Redis
is unreachable (operations.md "Redis outages").
"""
