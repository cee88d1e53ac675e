"""``token-broker test``: policy test cases, run through the real token flow.

A case file (config.md "Policy tests") lists requests and what the policy must answer:

.. code-block:: yaml

    cases:
      - name: acme analysts see only acme rows
        user: {id: alice, tenant: acme, roles: [analyst], claims: {dept: finance}}
        embed: sales-overview
        expect:
          outcome: allowed
          request: {securityContext: {tenantId: acme}}

Each case is a dry run (:mod:`app.dryrun`): the same policy object, renderer and
authorization as a live request, and the vendor request captured instead of sent.
``expect.request`` is matched as a subset of the body exactly as it would be sent:
objects by key, lists and scalars exactly; an expected ``null`` also matches an
absent field, so a case can prove that a role addition did *not* apply.

A case that names an embed, tenant or service the policy does not have fails: a
denial of a misspelt name proves nothing about the policy.

Exit codes: 0 every case passed, 1 at least one failed, 2 the tests could not run (a
case file or the policy file is missing, unreadable or malformed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from app.config.loader import ConfigError, format_path, parse_yaml
from app.dryrun import Decision, DryRun, DryRunInputError, DryRunRequest
from app.explain import emit, load_policy, policy_path, quiet_flow_logs

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NOT_RUN = 2
MAX_CASE_FILE_BYTES = 4 * 1024 * 1024
MAX_SHOWN_VALUE_CHARS = 160
CASES_SUFFIX = ".cases.yaml"

# What a dry run can answer: the policy's own decisions. Vendor and rate-limit outcomes
# need a vendor or traffic, so a case expecting one could never pass.
Outcome = Literal[
    "allowed", "embed_not_allowed", "tenant_not_allowed", "missing_claim", "invalid_request"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CaseUser(_Strict):
    id: str = Field(min_length=1)
    """A number is taken as its decimal string, as the broker maps a numeric ``sub``."""
    tenant: str | None = Field(default=None, min_length=1)
    tenants: list[str] | None = Field(default=None, min_length=1)
    roles: list[str] = Field(default_factory=list)
    email: str | None = None
    claims: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _numeric_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _one_tenant_field(self) -> CaseUser:
        if (self.tenant is None) == (self.tenants is None):
            raise ValueError("give tenant (one) or tenants (a list), not both and not neither")
        return self

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        return (self.tenant,) if self.tenant is not None else tuple(self.tenants or ())


class Expectation(_Strict):
    outcome: Outcome
    tenant: str | None = None
    region: str | None = None
    request: dict[str, JsonValue] | None = None

    @model_validator(mode="after")
    def _request_only_when_allowed(self) -> Expectation:
        if self.outcome != "allowed" and (self.request is not None or self.region is not None):
            raise ValueError("request and region can only be expected with outcome: allowed")
        return self


class Case(_Strict):
    name: str = Field(min_length=1)
    user: CaseUser
    embed: str = Field(min_length=1)
    tenant: str | None = Field(default=None, min_length=1)
    """The request's ``tenant`` field: which of a multi-tenant user's tenants."""
    service: str | None = Field(default=None, min_length=1)
    """Ask as this internal service (``POST /internal/v1/tokens``)."""
    expect: Expectation

    @model_validator(mode="after")
    def _service_acts_for_one_tenant(self) -> Case:
        if self.service is not None and (self.tenant is not None or self.user.tenants):
            raise ValueError(
                "a service acts for user.tenant (one tenant): tenant and user.tenants do not apply"
            )
        return self


class CaseFile(_Strict):
    cases: list[Case] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> CaseFile:
        seen: dict[str, int] = {}
        for index, case in enumerate(self.cases):
            if case.name in seen:
                raise ValueError(
                    f"cases[{index}] has the same name as cases[{seen[case.name]}]: {case.name!r}"
                )
            seen[case.name] = index
        return self


class CaseFileError(Exception):
    """A case file that cannot be used; ``str()`` is one line per problem, with the path."""


def read_case_file(path: Path) -> CaseFile:
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CaseFileError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise CaseFileError(f"{source}: is a directory with no case files") from None
    except OSError as exc:
        raise CaseFileError(f"{source}: cannot read file: {exc.strerror}") from None
    if len(raw) > MAX_CASE_FILE_BYTES:
        raise CaseFileError(f"{source}: file is larger than 4 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CaseFileError(f"{source}: file is not UTF-8 text") from None
    try:
        document = parse_yaml(text, source)
    except ConfigError as exc:
        reasons = "; ".join(issue.reason for issue in exc.issues)
        raise CaseFileError(f"{source}: {reasons}") from None
    if not isinstance(document, dict):
        raise CaseFileError(f"{source}: expected a mapping with a cases: list")
    try:
        return CaseFile.model_validate(document)
    except ValidationError as exc:
        raise CaseFileError("\n".join(_validation_lines(source, exc))) from None


def _validation_lines(source: str, exc: ValidationError) -> Iterator[str]:
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif err["type"] == "invalid-json-value":
            message = "not a JSON value (quote dates and other YAML-only values)"
        elif err["type"] == "literal_error" and loc and loc[-1] == "outcome":
            message = (
                "must be allowed or a decision the policy makes: embed_not_allowed, "
                "tenant_not_allowed, missing_claim, invalid_request"
            )
        where = format_path(loc)
        yield f"{source}: {where}: {message}" if where else f"{source}: {message}"


def _is_union_tag(part: str | int) -> bool:
    """pydantic names union members in locations (``str``, ``list[...]``); a YAML path does not."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)


def case_files(arguments: Iterable[str], policy: Path) -> list[Path]:
    """The files to run: the arguments (a directory means its *.yaml files), or else
    the cases file beside the policy (``demo.yaml`` → ``demo.cases.yaml``)."""
    given = list(arguments)
    if not given:
        name = policy.name.removesuffix(".yaml").removesuffix(".yml")
        return [policy.with_name(name + CASES_SUFFIX)]
    files: list[Path] = []
    for argument in given:
        path = Path(argument)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            files.extend(found if found else [path])
        else:
            files.append(path)
    return files


# --- matching -----------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    expected: Any
    actual: Any


def first_difference(expected: Any, actual: Any, path: str) -> Difference | None:
    """Where ``actual`` first fails to contain ``expected`` (objects by key, lists and
    scalars exactly), or None when it does."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return Difference(path, expected, actual)
        for key, value in expected.items():
            here = f"{path}.{key}"
            if key not in actual:
                if value is None:
                    continue  # an expected null: absent is as good as null
                return Difference(here, value, ABSENT)
            found = first_difference(value, actual[key], here)
            if found is not None:
                return found
        return None
    return exact_difference(expected, actual, path)


def exact_difference(expected: Any, actual: Any, path: str) -> Difference | None:
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return Difference(path, expected, actual)
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found = exact_difference(want, got, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return Difference(path, expected, actual)
        for key in [*expected, *(k for k in actual if k not in expected)]:
            found = exact_difference(
                expected.get(key, ABSENT), actual.get(key, ABSENT), f"{path}.{key}"
            )
            if found is not None:
                return found
        return None
    if expected is None and actual is ABSENT:
        return None
    return None if same_scalar(expected, actual) else Difference(path, expected, actual)


def same_scalar(expected: Any, actual: Any) -> bool:
    """JSON equality: ``true`` is not ``1``; ``1`` and ``1.0`` are the same number."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and expected == actual


# --- running ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    passed: bool
    message: str | None


def run_case(dry: DryRun, case: Case, where: str) -> CaseResult:
    request = DryRunRequest(
        user_id=case.user.id,
        tenants=case.user.tenant_ids,
        embed=case.embed,
        roles=tuple(case.user.roles),
        email=case.user.email,
        claims=case.user.claims,
        tenant=case.tenant,
        service=case.service,
    )
    try:
        decision = dry.decide(request)
    except DryRunInputError as exc:
        field = {"tenants": "user", "claims": "user.claims"}.get(exc.field, exc.field)
        return CaseResult(case.name, False, f"{where}.{field}: {exc}")
    found = check(decision, case.expect, f"{where}.expect")
    if found is None:
        return CaseResult(case.name, True, None)
    return CaseResult(case.name, False, dry.mask(found))


def check(decision: Decision, expect: Expectation, where: str) -> str | None:
    """The first way ``decision`` misses ``expect``, as one line; None when it meets it."""
    if decision.outcome != expect.outcome:
        if decision.allowed:
            got = f"allowed (tenant {decision.tenant}, region {decision.region})"
        else:
            got = f"{decision.outcome} ({decision.reason})"
        return f"{where}.outcome: expected {expect.outcome}, got {got}"
    if expect.tenant is not None and decision.tenant != expect.tenant:
        return f"{where}.tenant: expected {_shown(expect.tenant)}, got {_shown(decision.tenant)}"
    if expect.region is not None and decision.region != expect.region:
        return f"{where}.region: expected {_shown(expect.region)}, got {_shown(decision.region)}"
    if expect.request is not None:
        # The token's own body: what a signer signs, the guest-token body after a
        # login, or else the (one) request the vendor gets.
        if decision.payload is not None:
            actual: Any = dict(decision.payload)
        elif decision.request is not None:
            actual = decision.request.body
        else:
            return f"{where}.request: expected a vendor request, but this provider sends none"
        difference = first_difference(expect.request, actual, f"{where}.request")
        if difference is not None:
            return (
                f"{difference.path}: expected {_shown(difference.expected)}, "
                f"got {_shown(difference.actual)}"
            )
    return None


def _shown(value: Any) -> str:
    if value is ABSENT:
        return "nothing (no such field)"
    text = orjson.dumps(value).decode("utf-8")
    if len(text) > MAX_SHOWN_VALUE_CHARS:
        text = text[: MAX_SHOWN_VALUE_CHARS - 1] + "…"
    return text


def run_files(dry: DryRun, files: Mapping[Path, CaseFile]) -> tuple[int, int]:
    passed = failed = 0
    for path, case_file in files.items():
        count = len(case_file.cases)
        emit(f"{path} ({count} case{'s' if count != 1 else ''})")
        for index, case in enumerate(case_file.cases):
            result = run_case(dry, case, f"cases[{index}]")
            if result.passed:
                passed += 1
                emit(f"  pass  {result.name}")
            else:
                failed += 1
                emit(f"  FAIL  {result.name}: {result.message}")
    return passed, failed


# --- the command --------------------------------------------------------------------------


def run_tests(args: argparse.Namespace) -> int:
    """``token-broker test`` (the arguments are defined in app.cli)."""
    path = policy_path(args.config)
    config = load_policy(path)
    if config is None:
        print("token-broker test: the policy file does not load; no case was run", file=sys.stderr)
        return EXIT_NOT_RUN
    loaded: dict[Path, CaseFile] = {}
    problems: list[str] = []
    for file in case_files(args.files, path):
        try:
            loaded[file] = read_case_file(file)
        except CaseFileError as exc:
            problems.append(str(exc))
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print("token-broker test: no case was run", file=sys.stderr)
        return EXIT_NOT_RUN
    quiet_flow_logs()
    passed, failed = run_files(DryRun(config), loaded)
    emit(f"{passed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_PASSED
