"""``BROKER_REDIS_URL``: which Redis topology the broker talks to (config.md, operations.md
"Fleet mode").

Managed Redis usually comes as a cluster or behind Sentinel, so besides the single-node
forms redis-py reads itself (``redis://``, ``rediss://``, ``unix://``) the broker accepts:

- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for
  TLS): the start-up nodes of a Redis Cluster; the client discovers the rest;
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://`` for TLS): the Sentinels that know which node is the master of
  ``service``; the client asks them again after every connection failure, so a failover
  needs no restart.

The same scheme names as the ``limits`` library. Parsing is pure (no redis-py import:
``check-config`` stays fast) and every error names the problem, never the URL, which
may carry a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

Topology = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
REDIS_SCHEMES = SINGLE_SCHEMES | CLUSTER_SCHEMES | SENTINEL_SCHEMES
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_OPTIONS = frozenset({"ssl_ca_certs"})
SENTINEL_OPTIONS = frozenset({"ssl_ca_certs", "sentinel_username", "sentinel_password"})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``BROKER_REDIS_URL``. ``repr`` leaves the credentials out."""

    topology: Topology
    url: str = field(repr=False)
    """The URL as given (for ``single``, handed to ``redis.asyncio.Redis.from_url``)."""
    nodes: tuple[tuple[str, int], ...] = ()
    """Cluster start-up nodes, or the Sentinels."""
    service: str | None = None
    """Sentinel: the name of the monitored master."""
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Query options (``ssl_ca_certs``, ``sentinel_username``, ``sentinel_password``)."""

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


def _nodes(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            raise ValueError("names an empty host in its host list")
        if part.startswith("["):  # [IPv6]:port
            host, _, rest = part[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError("has a malformed IPv6 host")
            port_text = rest[1:]
        else:
            host, _, port_text = part.partition(":")
        if not host:
            raise ValueError("names no host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError("has a port that is not a number") from None
        if not 0 < port < 65536:
            raise ValueError("has a port out of range")
        nodes.append((host, port))
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """The topology and parts of ``url``; ``ValueError`` with a secret-free reason."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not rest or scheme not in REDIS_SCHEMES:
        raise ValueError(
            "the scheme must be one of " + ", ".join(f"{s}://" for s in sorted(REDIS_SCHEMES))
        )
    if scheme in SINGLE_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if scheme != "unix" and not parts.hostname:
            raise ValueError("names no host")
        return RedisTarget("single", url, tls=scheme == "rediss")
    # Comma-separated hosts are not something urlsplit understands: split by hand.
    location, _, query = rest.partition("?")
    authority, _, path = location.partition("/")
    if "@" in path or "@" in query:
        # A '/' or '?' inside the user-info (an unencoded password) ended the authority
        # early: the password's tail would be read as a path or an option name, and an
        # error quoting those would print it.
        raise ValueError(
            "has an '@' after the host list: percent-encode '/', '?' and '@' in the "
            "user name and password (%2F, %3F, %40)"
        )
    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    options = tuple(parse_qsl(query, keep_blank_values=True))
    cluster = scheme in CLUSTER_SCHEMES
    allowed = CLUSTER_OPTIONS if cluster else SENTINEL_OPTIONS
    unknown = sorted({name for name, _ in options} - allowed)
    if unknown:
        raise ValueError(
            f"has an unknown option {unknown[0]!r} for {scheme}:// (known: "
            + ", ".join(sorted(allowed))
            + ")"
        )
    tls = scheme.startswith("rediss")
    if cluster:
        if path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
        return RedisTarget(
            "cluster",
            url,
            nodes=_nodes(hosts, DEFAULT_PORT),
            tls=tls,
            username=username,
            password=password,
            options=options,
        )
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise ValueError("names no Sentinel service (redis+sentinel://host:port/service)")
    if len(segments) > 2:
        raise ValueError("has a path beyond /service/db")
    db = 0
    if len(segments) == 2:
        try:
            db = int(segments[1])
        except ValueError:
            raise ValueError("has a database number that is not a number") from None
    return RedisTarget(
        "sentinel",
        url,
        nodes=_nodes(hosts, DEFAULT_SENTINEL_PORT),
        service=unquote(segments[0]),
        db=db,
        tls=tls,
        username=username,
        password=password,
        options=options,
    )
