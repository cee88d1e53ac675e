"""Readers for the deployment files, shared by the tests in this package."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
COMPOSE_POLICY = REPO_ROOT / "config" / "compose.yaml"
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@dataclass(frozen=True)
class VariableRef:
    name: str
    operator: str | None
    argument: str

    @property
    def required(self) -> bool:
        return self.operator is None or "?" in self.operator


def variable_refs(text: str) -> list[VariableRef]:
    """Every ``${VAR...}`` reference in text (Compose and policy-file syntax alike)."""
    return [VariableRef(m.group(1), m.group(2), m.group(3) or "") for m in _VARIABLE.finditer(text)]


def yaml_strings(node: Any) -> list[str]:
    """Every string value and key in a parsed YAML tree (comments are not part of it)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [
            s for key, value in node.items() for s in (*yaml_strings(key), *yaml_strings(value))
        ]
    if isinstance(node, list):
        return [s for item in node for s in yaml_strings(item)]
    return []


def yaml_variable_refs(path: Path) -> list[VariableRef]:
    return [ref for text in yaml_strings(load_yaml(path)) for ref in variable_refs(text)]


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Resolve ``${VAR...}`` the way Compose does; an unset required variable raises."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        value = environ.get(name)
        unset = value is None or (operator is not None and operator.startswith(":") and not value)
        if not unset:
            return str(value)
        if operator in (":-", "-"):
            return argument
        raise KeyError(f"{name} is not set ({argument or 'required'})")

    return _VARIABLE.sub(replace, text)


def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file as Compose reads it (KEY=VALUE lines, # comments)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{path.name}:{number}: not a KEY=VALUE line")
        values[name] = value
    return values


EXAMPLE_ONLY_ENV = {
    "METABASE_EMBEDDING_SECRET": "0" * 64,
    "SUPERSET_PASSWORD": "fake-superset-password-0000",
    "PRESET_API_TOKEN": "fake-preset-api-token-0000",
    "PRESET_API_SECRET": "fake-preset-api-secret-0000",
}
"""Variables config/broker.example.yaml needs beyond .env.example (which holds exactly
what the compose stack uses); Metabase's secret is 64 hex characters: zeros."""


def example_env(path: Path) -> dict[str, str]:
    """What config/broker.example.yaml is run with: .env.example plus EXAMPLE_ONLY_ENV."""
    return {**read_env_file(path), **EXAMPLE_ONLY_ENV}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --- Dockerfile -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of the arguments, or None for shell form."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                name, _, value = word.partition("=")
                values[name] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages (enough for static checks, not a builder)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):  # comments may sit between continuation lines
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            logical.append(pending.strip())
        pending = ""

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            base = words[0]
            for name, value in global_args.items():
                base = base.replace(f"${{{name}}}", value).replace(f"${name}", value)
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        elif not stages:
            if keyword == "ARG":
                name, _, value = arguments.partition("=")
                global_args[name] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return global_args, stages
