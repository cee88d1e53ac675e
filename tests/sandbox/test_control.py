"""The /_sandbox control API: request history and fault injection, over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.sandbox import create_sandbox_app
from tests.sandbox.harness import (
    DATABRAIN_BODY,
    EMBEDDABLE_BODY,
    Sandbox,
    databrain_post,
    embeddable_post,
    running_sandbox,
    sandbox_settings,
)
from tests.support.servers import serve_in_thread

# --- request history ----------------------------------------------------------------------


def test_history_shows_what_each_vendor_received_with_the_key_masked(sandbox: Sandbox) -> None:
    embeddable_post(sandbox, region="us", key="test-embeddable-us-key")
    databrain_post(sandbox, headers={"X-Trace": "t-1"})

    first, second = sandbox.requests()
    assert first["vendor"] == "embeddable"
    assert first["region"] == "us"
    assert first["method"] == "POST"
    assert first["path"] == "/embeddable/us/api/v1/security-token"
    assert first["body"] == EMBEDDABLE_BODY
    assert first["status"] == 200
    assert first["headers"]["authorization"] == "Bearer ***"
    assert second["vendor"] == "databrain"
    assert second["region"] is None
    assert second["headers"]["x-trace"] == "t-1"
    assert second["body"] == DATABRAIN_BODY
    assert second["id"] > first["id"]
    everything = httpx.get(f"{sandbox.url}/_sandbox/requests").text
    assert "test-embeddable-us-key" not in everything
    assert "test-databrain-key" not in everything


def test_history_filters_by_vendor_and_region(sandbox: Sandbox) -> None:
    embeddable_post(sandbox, region="us", key="test-embeddable-us-key")
    embeddable_post(sandbox, region="eu")
    databrain_post(sandbox)

    assert [r["vendor"] for r in sandbox.requests(vendor="databrain")] == ["databrain"]
    assert [r["region"] for r in sandbox.requests(vendor="embeddable")] == ["us", "eu"]
    assert [r["region"] for r in sandbox.requests(vendor="embeddable", region="eu")] == ["eu"]
    response = sandbox.control.get(f"{sandbox.url}/_sandbox/requests?vendor=looker")
    assert response.status_code == 400


def test_delete_clears_history_and_remembered_tokens(sandbox: Sandbox) -> None:
    token = databrain_post(sandbox).json()["token"]

    assert sandbox.control.delete(f"{sandbox.url}/_sandbox/requests").status_code == 200

    assert sandbox.requests() == []
    assert sandbox.control.get(f"{sandbox.url}/_sandbox/tokens/{token}").status_code == 404


def test_history_is_bounded() -> None:
    for small in running_sandbox(history_limit=3):
        for _ in range(5):
            databrain_post(small)
        assert [r["id"] for r in small.requests()] == [3, 4, 5]
        tokens = [r["token"] for r in small.requests()]
        assert all(
            small.control.get(f"{small.url}/_sandbox/tokens/{t}").status_code == 200 for t in tokens
        )


# --- faults -------------------------------------------------------------------------------


def post_fault(sandbox: Sandbox, rule: Any) -> httpx.Response:
    return sandbox.control.post(f"{sandbox.url}/_sandbox/faults", json=rule)


@pytest.mark.parametrize(
    "rule",
    [
        {"vendor": "looker", "status": 500},
        {"vendor": "databrain"},
        {"vendor": "databrain", "status": 500, "drop_connection": True},
        {"vendor": "databrain", "malformed_200": True, "drop_connection": True},
        {"vendor": "databrain", "status": 500, "fraction": 0.5, "count": 2},
        {"vendor": "databrain", "status": 500, "fraction": 0},
        {"vendor": "databrain", "status": 500, "fraction": 1.5},
        {"vendor": "databrain", "status": 500, "count": 0},
        {"vendor": "databrain", "status": 200},
        {"vendor": "databrain", "status": 600},
        {"vendor": "databrain", "latency_ms": -1},
        {"vendor": "databrain", "latency_ms": 10, "retry_after": 5},
        {"vendor": "databrain", "drop_connection": True, "vendor_code": "X"},
        {"vendor": "databrain", "status": 429, "retry_after": -3},
        {"vendor": "databrain", "region": "eu", "status": 500},
        {"vendor": "databrain", "status": 500, "colour": "red"},
        {"vendor": "databrain", "status": 400, "vendor_code": "has space"},
        [{"vendor": "databrain", "status": 500}, {"vendor": "databrain"}],
        "not a rule",
    ],
)
def test_incoherent_fault_rules_are_refused_and_change_nothing(sandbox: Sandbox, rule: Any) -> None:
    response = post_fault(sandbox, rule)

    assert response.status_code == 400
    assert response.json()["detail"]
    assert sandbox.control.get(f"{sandbox.url}/_sandbox/faults").json() == {"faults": []}


def test_faults_are_listed_and_cleared_per_vendor(sandbox: Sandbox) -> None:
    rules = [
        {"vendor": "databrain", "status": 503, "count": 2},
        {"vendor": "embeddable", "region": "eu", "latency_ms": 5},
    ]
    listed = post_fault(sandbox, rules).json()["faults"]
    assert [(f["vendor"], f.get("status"), f["remaining"]) for f in listed] == [
        ("databrain", 503, 2),
        ("embeddable", None, None),
    ]

    remaining = sandbox.control.delete(
        f"{sandbox.url}/_sandbox/faults", params={"vendor": "databrain"}
    ).json()["faults"]

    assert [f["vendor"] for f in remaining] == ["embeddable"]


def test_a_region_rule_leaves_other_regions_alone(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="embeddable", region="eu", status=503)

    assert embeddable_post(sandbox, region="eu").status_code == 503
    assert embeddable_post(sandbox, region="us", key="test-embeddable-us-key").status_code == 200
    assert databrain_post(sandbox).status_code == 200


def test_a_newer_rule_replaces_the_vendor_rule(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="databrain", status=503)
    sandbox.fault(vendor="databrain", status=500)

    assert databrain_post(sandbox).status_code == 500


def test_a_counted_rule_expires(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="databrain", status=500, count=1)

    assert [databrain_post(sandbox).status_code for _ in range(2)] == [500, 200]
    assert sandbox.control.get(f"{sandbox.url}/_sandbox/faults").json() == {"faults": []}


def test_fraction_one_fails_every_request(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="databrain", status=502, fraction=1.0)

    assert {databrain_post(sandbox).status_code for _ in range(3)} == {502}


def test_gateway_errors_answer_with_an_html_page(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="databrain", status=502)

    response = databrain_post(sandbox)

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, {"error": {"code": "INTERNAL_SERVER_ERROR", "message": "Internal Server Error"}}),
        (429, {"error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Too Many Requests"}}),
        (403, {"error": {"code": "INVALID_PERMISSIONS", "message": "Forbidden"}}),
    ],
)
def test_databrain_fault_statuses_use_its_error_shape(
    sandbox: Sandbox, status: int, expected: dict[str, Any]
) -> None:
    sandbox.fault(vendor="databrain", status=status)

    response = databrain_post(sandbox)

    assert (response.status_code, response.json()) == (status, expected)


def test_embeddable_fault_statuses_use_its_error_shape(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="embeddable", status=500, message="boom")

    response = embeddable_post(sandbox)

    assert (response.status_code, response.json()) == (500, {"errorMessage": "boom"})


@pytest.mark.parametrize("retry_after", [7, "Wed, 21 Oct 2037 07:28:00 GMT"])
def test_rate_limit_faults_send_retry_after(sandbox: Sandbox, retry_after: int | str) -> None:
    sandbox.fault(vendor="embeddable", status=429, retry_after=retry_after)

    response = embeddable_post(sandbox)

    assert response.status_code == 429
    assert response.headers["retry-after"] == str(retry_after)


def test_malformed_200_is_truncated_json(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="embeddable", malformed_200=True)

    response = embeddable_post(sandbox)

    assert response.status_code == 200
    assert response.content == b'{"token": "'
    assert sandbox.last_request("embeddable")["fault"] == "malformed_200"


def test_faults_come_before_authentication(sandbox: Sandbox) -> None:
    sandbox.fault(vendor="databrain", status=503)

    assert databrain_post(sandbox, key="wrong").status_code == 503


# --- dropped connections, under both of uvicorn's HTTP implementations --------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=["h11", "httptools"])
def server_per_protocol(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    yield from running_sandbox_with(http=request.param)


def running_sandbox_with(**config: Any) -> Iterator[Sandbox]:
    with (
        serve_in_thread(create_sandbox_app(sandbox_settings()), **config) as url,
        httpx.Client(timeout=5) as control,
    ):
        yield Sandbox(url, control)


def test_a_dropped_connection_closes_the_socket_without_any_answer(
    server_per_protocol: Sandbox,
) -> None:
    sandbox = server_per_protocol
    errors = Collect()
    logging.getLogger("uvicorn.error").addHandler(errors)
    try:
        sandbox.fault(vendor="databrain", drop_connection=True, count=1)

        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            databrain_post(sandbox)

        assert databrain_post(sandbox).status_code == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(errors)
    assert [r.getMessage() for r in errors.records if r.levelno >= logging.WARNING] == []
    assert sandbox.requests()[0]["fault"] == "drop_connection"
