"""The nesting scanner is linear, proven by counting its work, and it is right.

Regression for the red team's quadratic scan (issue 14, item 2): a token header of
``"`` + ``[`` * 17 + ``"`` + ``\\"`` * 3000 cost a third of a second before authentication
because the old regex re-scanned from every escaped quote of the unclosed string.
The counts here are :class:`ScanMeter`'s steps and characters examined, never time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import app.strict_json as strict_json
from app.api.body import MAX_BODY_BYTES, parse_json
from app.auth.jwks import JwksFetchError, parse_jwks
from app.auth.tokenizer import parse_compact_jws
from app.errors import InvalidRequest, InvalidSession
from app.jsonscan import ScanMeter, nesting_exceeds
from app.strict_json import StrictJsonError, loads_strict_json
from tests.auth.keys import b64url

FUZZ = settings(
    max_examples=300,
    deadline=None,
    # `metered` is cleared at the start of each example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def red_team_header(escaped_quotes: int) -> str:
    return '"' + "[" * 17 + '"' + '\\"' * escaped_quotes


ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "unclosed string of escaped quotes": lambda n: red_team_header(n // 2),
    "escaped quotes then brackets": lambda n: '"' + "[" * 17 + '\\"' * (n // 4) + "[" * (n // 2),
    "many short strings": lambda n: "[" * 17 + '"",' * (n // 3),
    "brackets inside strings": lambda n: '{"a":"' + "[{" * (n // 2) + '"}' + "[" * 17,
    "backslash runs": lambda n: '"' + "[" * 17 + "\\" * n,
    "deep within the limit, repeated": lambda n: ("[" * 16 + "]" * 16) * (n // 32),
    "quote storm": lambda n: '"' * n + "[" * 17,
}


def reference_exceeds(text: str, max_depth: int) -> bool:
    """Character by character, obviously right, obviously linear (the test oracle)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def assert_linear(meter: ScanMeter, text: str) -> None:
    # Every character is examined at most twice; a step consumes at least one.
    assert meter.chars_examined <= 2 * len(text) + 2, (meter, len(text))
    assert meter.steps <= len(text) + 1, (meter, len(text))


@pytest.mark.parametrize("family", sorted(ADVERSARIAL))
@pytest.mark.parametrize("size", [1_000, 8_000, 64_000])
def test_work_is_linear_in_the_input(family: str, size: int) -> None:
    text = ADVERSARIAL[family](size)
    meter = ScanMeter()
    verdict = nesting_exceeds(text, 16, meter)
    assert verdict == reference_exceeds(text, 16)
    assert_linear(meter, text)


def test_doubling_the_input_at_most_doubles_the_work() -> None:
    work = []
    for escaped_quotes in (2_000, 4_000, 8_000, 16_000):
        meter = ScanMeter()
        nesting_exceeds(red_team_header(escaped_quotes), 16, meter)
        work.append(meter.chars_examined + meter.steps)
    for smaller, larger in itertools.pairwise(work):
        assert larger <= 2 * smaller + 4


@pytest.fixture
def metered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ScanMeter]]:
    """Every nesting check the real parsers make, with its input size and its work."""
    calls: list[tuple[int, ScanMeter]] = []

    def counting(text: str, max_depth: int, meter: ScanMeter | None = None) -> bool:
        own = ScanMeter()
        calls.append((len(text), own))
        return nesting_exceeds(text, max_depth, own)

    monkeypatch.setattr(strict_json, "nesting_exceeds", counting)
    return calls


def test_red_team_token_costs_linear_work_before_authentication(
    metered: list[tuple[int, ScanMeter]],
) -> None:
    # The finding at max_token_bytes 65536: one request took 11 s of event-loop time.
    header = red_team_header(23_000)
    token = f"{b64url(header.encode())}.{b64url(b'{}')}.{b64url(b'sig')}"
    assert len(token) <= 65_536
    with pytest.raises(InvalidSession, match="header is not strict JSON"):
        parse_compact_jws(token, max_bytes=65_536)
    size, meter = metered[0]
    assert size == len(header)
    assert meter.chars_examined <= 2 * size + 2


def test_red_team_body_costs_linear_work(metered: list[tuple[int, ScanMeter]]) -> None:
    body = ('{"embed":' + red_team_header(MAX_BODY_BYTES // 2 - 40)).encode()
    assert len(body) <= MAX_BODY_BYTES
    with pytest.raises(InvalidRequest, match="not accepted JSON"):
        parse_json(body)
    size, meter = metered[0]
    assert meter.chars_examined <= 2 * size + 2


def test_red_team_jwks_document_costs_linear_work(metered: list[tuple[int, ScanMeter]]) -> None:
    document = ('{"keys":[' + red_team_header(400_000)).encode()
    with pytest.raises(JwksFetchError):
        parse_jwks(document)
    size, meter = metered[0]
    assert size == len(document)
    assert meter.chars_examined <= 2 * size + 2


# --- fuzz: correctness against the oracle, and the work bound, on any text --------

structural_text = st.text(alphabet='"\\[]{}a, :', max_size=400)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{}\n'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='k"\\[{', max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


@FUZZ
@given(text=structural_text | st.text(max_size=200), max_depth=st.integers(0, 20))
@example(text=red_team_header(50), max_depth=16)
@example(text='"\\', max_depth=0)
def test_fuzz_matches_the_oracle_within_the_work_bound(text: str, max_depth: int) -> None:
    meter = ScanMeter()
    assert nesting_exceeds(text, max_depth, meter) == reference_exceeds(text, max_depth)
    assert_linear(meter, text)


@FUZZ
@given(value=json_values, max_depth=st.integers(0, 8))
def test_fuzz_valid_json_gets_its_true_depth(value: Any, max_depth: int) -> None:
    text = json.dumps(value)
    meter = ScanMeter()
    assert nesting_exceeds(text, max_depth, meter) == (depth_of(value) > max_depth)
    assert_linear(meter, text)
    if depth_of(value) <= max_depth:
        assert loads_strict_json(text, max_depth=max_depth) == value
    else:
        with pytest.raises(StrictJsonError, match="nested too deeply"):
            loads_strict_json(text, max_depth=max_depth)


@FUZZ
@given(raw=st.binary(max_size=300) | structural_text.map(str.encode))
def test_fuzz_body_reader_answers_400_or_an_object(
    raw: bytes, metered: list[tuple[int, ScanMeter]]
) -> None:
    metered.clear()
    with contextlib.suppress(InvalidRequest):
        assert isinstance(parse_json(raw), dict)
    for size, meter in metered:
        assert meter.chars_examined <= 2 * size + 2


@FUZZ
@given(
    header=structural_text | json_values.map(json.dumps),
    payload=structural_text | json_values.map(json.dumps),
    signature=st.binary(max_size=8),
)
def test_fuzz_tokenizer_answers_invalid_session_or_a_token(
    header: str, payload: str, signature: bytes, metered: list[tuple[int, ScanMeter]]
) -> None:
    metered.clear()
    token = f"{b64url(header.encode())}.{b64url(payload.encode())}.{b64url(signature)}"
    try:
        parsed = parse_compact_jws(token, max_bytes=65_536)
    except InvalidSession:
        pass
    else:
        assert parsed.header == json.loads(header)
    for size, meter in metered:
        assert meter.chars_examined <= 2 * size + 2
