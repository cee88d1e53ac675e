"""``BROKER_REDIS_URL`` forms: single node, Cluster, Sentinel (config.md)."""

from __future__ import annotations

import pytest

from app.state.redis_url import parse_redis_url

SECRET = "canary-redis-password-0815"


def test_single_node_urls_are_left_to_redis_py() -> None:
    for url in ("redis://cache:6379/2", f"rediss://:{SECRET}@cache:6380/0", "unix:///run/r.sock"):
        target = parse_redis_url(url)
        assert (target.topology, target.url) == ("single", url)


def test_cluster_url_lists_start_up_nodes_and_credentials() -> None:
    target = parse_redis_url(
        f"rediss+cluster://app:{SECRET}@a:7000,b,[::1]:7002?ssl_ca_certs=/ca.pem"
    )
    assert target.topology == "cluster"
    assert target.nodes == (("a", 7000), ("b", 6379), ("::1", 7002))
    assert (target.tls, target.username, target.password) == (True, "app", SECRET)
    assert target.option("ssl_ca_certs") == "/ca.pem"


def test_sentinel_url_names_sentinels_service_and_db() -> None:
    target = parse_redis_url(
        f"redis+sentinel://:{SECRET}@s1:26380,s2/mymaster/3?sentinel_password=other"
    )
    assert target.topology == "sentinel"
    assert target.nodes == (("s1", 26380), ("s2", 26379))
    assert (target.service, target.db, target.tls) == ("mymaster", 3, False)
    assert (target.username, target.password) == (None, SECRET)
    assert target.option("sentinel_password") == "other"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memcached://cache:11211", "scheme must be one of"),
        ("redis+cluster://a:7000/2", "only database 0"),
        ("redis+cluster://a:port", "not a number"),
        ("redis+cluster://a:70000", "out of range"),
        ("redis+cluster://a,,b", "empty host"),
        ("redis+cluster://a?db=2", "unknown option 'db'"),
        ("redis+sentinel://s1:26379", "no Sentinel service"),
        ("redis+sentinel://s1/svc/x", "not a number"),
        ("redis+sentinel://s1/svc/0/more", "beyond /service/db"),
    ],
)
def test_bad_urls_say_why_without_the_secret(url: str, reason: str) -> None:
    with_secret = url.replace("://", f"://user:{SECRET}@", 1)
    with pytest.raises(ValueError, match=reason) as caught:
        parse_redis_url(with_secret)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
@pytest.mark.parametrize("separator", ["?", "/", "?a=b&"])
def test_a_password_with_an_unencoded_separator_is_not_quoted(scheme: str, separator: str) -> None:
    # The separator ends the authority early: the password's tail must not come back
    # as an "unknown option" or a service name in the one-line error.
    head, tail = "canary-head-4711", "canary-tail-0815"
    url = f"{scheme}://user:{head}{separator}{tail}@h1:7000/svc"
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert head not in str(caught.value) and tail not in str(caught.value)
    assert "percent-encode" in str(caught.value)


def test_repr_leaves_the_credentials_out() -> None:
    target = parse_redis_url(f"redis+sentinel://u:{SECRET}@s1/svc?sentinel_password={SECRET}")
    assert SECRET not in repr(target)
