"""How deep does JSON text nest? A single linear pass over attacker-controlled text.

Session tokens, request bodies and JWKS documents are checked for nesting *before*
``json`` parses them (so a 5,000-deep array is an error, not a ``RecursionError``).
That check runs before authentication, so its cost must be linear in the input: the
regex it replaced (``"(?:[^"\\]|\\.)*"`` under ``finditer``) re-scanned to the end of
the text from every escaped quote of an unclosed string, which made an 8 KiB token
cost a third of a second of event-loop time.

The scanner here only ever moves forward. Each step is one anchored regex primitive
over a single character class or a deterministic string-literal body (no alternation
that can fail late, nothing to backtrack into), and it starts exactly where the
previous one stopped. So every character is examined at most twice (once when it is
consumed, once as the character that ended a run), and the number of steps is at most
the number of structural characters plus one. :class:`ScanMeter` counts both, so tests
prove the bound by counting work rather than by timing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The next character that matters: a quote or a bracket. One character class: no
# backtracking, and ``search`` examines each character it skips once.
_NEXT_STRUCTURAL = re.compile(r'["\[\]{}]')
# The rest of a string literal after its opening quote, up to (not including) the
# closing quote or the end of the text. The two branches start with different
# characters (anything but quote/backslash, or a backslash), so the loop is
# deterministic; it always succeeds, so nothing is ever retried from a later position.
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)

_OPENERS = frozenset("[{")


@dataclass(slots=True)
class ScanMeter:
    """Work done by :func:`nesting_exceeds`: steps taken and characters examined."""

    steps: int = 0
    chars_examined: int = 0


def nesting_exceeds(text: str, max_depth: int, meter: ScanMeter | None = None) -> bool:
    """True when brackets outside string literals nest deeper than ``max_depth``.

    Brackets inside strings (including after escaped quotes) do not count. An
    unterminated string ends the scan: the rest of the text is inside it, and the JSON
    parser rejects the text anyway. Text that is not JSON at all still gets a verdict in
    linear time; only valid JSON is guaranteed a *meaningful* one.
    """
    if text.count("{") + text.count("[") <= max_depth:
        if meter is not None:  # two C passes over the text
            meter.steps += 1
            meter.chars_examined += 2 * len(text)
        return False  # fast path: too few brackets to be that deep
    depth = 0
    position = 0
    length = len(text)
    find_structural = _NEXT_STRUCTURAL.search
    match_string_body = _STRING_BODY.match
    while True:
        found = find_structural(text, position)
        if found is None:
            if meter is not None:
                meter.steps += 1
                meter.chars_examined += length - position
            return False
        if meter is not None:
            meter.steps += 1
            meter.chars_examined += found.end() - position
        symbol = found.group()
        position = found.end()
        if symbol == '"':
            # Always matches (possibly empty), so never None.
            end = match_string_body(text, position).end()  # type: ignore[union-attr]
            if meter is not None:
                meter.steps += 1
                meter.chars_examined += end - position + 1  # +1: the quote or end seen
            if end >= length or text[end] != '"':
                return False  # unterminated string: nothing after it can nest
            position = end + 1  # past the closing quote
        elif symbol in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
