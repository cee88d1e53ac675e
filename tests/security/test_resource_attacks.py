"""Resource attacks from a malicious vendor or JWKS server, against a real broker process.

Regressions for issue 14 (red team), item 1: a 200 answer with ``Content-Encoding:
gzip, gzip`` and a body of a few kilobytes that inflates to 1 GiB took the broker from
72 MiB to 2.1 GiB of resident memory, on the vendor path and on every retry of the JWKS
background refresher. The broker runs as a child process (``token-broker serve``) so
its memory is its own; the attacker is :func:`tests.support.rogue.rogue_server`, raw
asyncio on loopback. Memory is counted (``VmHWM``, the peak resident set), never timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.brokers import broker_environment
from tests.support.policies import AUDIENCE, base_policy, write_policy
from tests.support.process import BrokerProcess, broker_process
from tests.support.rogue import (
    RogueRequest,
    RogueServer,
    gzip_bomb,
    http_response,
    peak_rss_bytes,
    rogue_server,
)
from tests.support.stack import bearer, session_token

pytestmark = pytest.mark.slow

MIB = 1 << 20
GIB = 1 << 30
# What reading one bomb may add to the broker's peak memory: a bounded body is
# 64 KiB (vendor) or 1 MiB (JWKS); the rest is allocator noise. The old code added
# the bomb's decoded size (hundreds of MiB to GiB).
MAX_GROWTH_BYTES = 24 * MIB


def bombs() -> dict[str, tuple[str, bytes]]:
    return {
        # The finding: 1 GiB behind two gzip layers in a few kilobytes.
        "gzip, gzip": ("gzip, gzip", gzip_bomb(GIB, layers=2)),
        # One layer that passes the 64 KiB received-bytes cap: 60 MiB decoded.
        "gzip under the received cap": ("gzip", gzip_bomb(60 * MIB)),
        # Larger than the JWKS cap compressed, too: refused on either count.
        "gzip 512 MiB": ("gzip", gzip_bomb(512 * MIB)),
    }


@pytest.fixture
def rogue() -> Iterator[tuple[RogueServer, dict[str, bytes]]]:
    """The rogue server, answering ``answer["bytes"]`` unless a test sets ``respond``."""
    answer = {"bytes": http_response(503, b"")}
    with rogue_server(lambda _: answer["bytes"]) as server:
        yield server, answer


def environment(rogue_url: str) -> dict[str, str]:
    env = broker_environment(rogue_url)
    env.pop("BROKER_LOG_LEVEL", None)
    return env


def healthz_answers(broker: BrokerProcess) -> None:
    assert httpx.get(f"{broker.url}/healthz", timeout=10).status_code == 200


def test_vendor_decompression_bombs_cost_bounded_memory(
    tmp_path: Path, rogue: tuple[RogueServer, dict[str, bytes]]
) -> None:
    server, answer = rogue
    path = write_policy(tmp_path, base_policy())
    with broker_process(path, tmp_path, environment(server.url)) as broker:
        session = session_token("mallory", "acme", ("viewer",))
        with httpx.Client(timeout=30) as client:
            # Warm up the request path once, so the baseline includes it.
            client.post(
                f"{broker.url}/v1/tokens", json={"embed": "sales-overview"}, headers=bearer(session)
            )
            baseline = peak_rss_bytes(broker.process.pid)
            for name, (encoding, bomb) in bombs().items():
                answer["bytes"] = http_response(
                    200, bomb, {"Content-Type": "application/json", "Content-Encoding": encoding}
                )
                response = client.post(
                    f"{broker.url}/v1/tokens",
                    json={"embed": "sales-overview"},
                    headers=bearer(session),
                )
                assert response.status_code == 502, (name, response.text)
                assert response.json()["code"] == "upstream_bad_response"
                growth = peak_rss_bytes(broker.process.pid) - baseline
                assert growth < MAX_GROWTH_BYTES, f"{name}: peak RSS grew {growth / MIB:.0f} MiB"
                healthz_answers(broker)
    vendor_calls = [r for r in server.requests if r.method == "POST"]
    assert vendor_calls
    assert all(r.headers.get("accept-encoding") == "identity" for r in vendor_calls)


def test_jwks_decompression_bombs_cost_bounded_memory_on_every_refresh(
    tmp_path: Path, rogue: tuple[RogueServer, dict[str, bytes]]
) -> None:
    server, _answer = rogue
    issuers = {  # one rogue issuer per bomb, each with its own JWKS path
        f"https://rogue-{index}.example.test/": (f"/jwks-{index}.json", *bombs()[name])
        for index, name in enumerate(["gzip, gzip", "gzip 512 MiB"])
    }
    answers = {
        target: http_response(
            200, body, {"Content-Type": "application/json", "Content-Encoding": encoding}
        )
        for target, encoding, body in issuers.values()
    }
    server.respond = lambda request: answers[request.target]
    document = base_policy()
    for issuer, (target, _, _) in issuers.items():
        document["session"]["issuers"].append(
            {
                "issuer": issuer,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks_url": f"{server.url}{target}",
            }
        )
    path = write_policy(tmp_path, document)

    def fetches(target: str) -> list[RogueRequest]:
        return [r for r in server.requests if r.target == target]

    # Not ready while the rogue issuers have no keys: wait for liveness instead.
    with broker_process(path, tmp_path, environment(server.url), ready_path="/healthz") as broker:
        # The background refresher fetches at start-up, then retries after 1 s and 2 s.
        deadline = time.monotonic() + 60
        while any(len(fetches(target)) < 3 for target in answers):
            assert time.monotonic() < deadline, "the refresher did not retry"
            healthz_answers(broker)
        metrics = httpx.get(f"{broker.url}/metrics", timeout=10).text
        peak = peak_rss_bytes(broker.process.pid)
        healthz_answers(broker)
    for issuer, (target, _, _) in issuers.items():
        assert all(r.headers.get("accept-encoding") == "identity" for r in fetches(target))
        failed = [
            line
            for line in metrics.splitlines()
            if line.startswith("token_broker_jwks_refresh_total{")
            and issuer in line
            and 'outcome="ok"' not in line
        ]
        assert sum(float(line.rpartition(" ")[2]) for line in failed) >= 3, metrics
    # No baseline before the first fetch exists: compare with the same broker without
    # the rogue issuers. The old code peaked at 330 MiB to 2 GiB here.
    reference = reference_peak(tmp_path)
    assert peak < reference + MAX_GROWTH_BYTES, (
        f"peak RSS {peak / MIB:.0f} MiB, reference {reference / MIB:.0f} MiB"
    )


def reference_peak(tmp_path: Path) -> int:
    """The peak RSS of the same broker without the rogue issuers, after one request."""
    path = write_policy(tmp_path, base_policy(), name="reference.yaml")
    with broker_process(path, tmp_path, environment("http://127.0.0.1:9")) as broker:
        httpx.get(f"{broker.url}/metrics", timeout=10)
        return peak_rss_bytes(broker.process.pid)


def test_rogue_server_helper_sees_requests(
    rogue: tuple[RogueServer, dict[str, bytes]],
) -> None:
    server, answer = rogue
    answer["bytes"] = http_response(200, b"{}", {"Content-Type": "application/json"})
    assert httpx.get(f"{server.url}/x", timeout=5).json() == {}
    assert server.requests[0].target == "/x"
