"""Every relative link in the README, docs/ and the other Markdown files resolves in a
fresh clone: the file exists inside the repository, and a #fragment names a heading."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    """The Markdown a clone has: the files git tracks or would track (not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(ROOT / name for name in listed if (ROOT / name).is_file())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(match) for match in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def dead_links(path: Path, root: Path = ROOT) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    dead = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if target.startswith(EXTERNAL):
            continue
        name, _, fragment = target.partition("#")
        resolved = (path.parent / name).resolve() if name else path
        missing = not resolved.is_relative_to(root) or not resolved.exists()
        if missing or (fragment and resolved.suffix == ".md" and fragment not in anchors(resolved)):
            dead.append(target)
    return dead


FILES = markdown_files()


def test_the_readme_and_docs_are_checked() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in FILES}
    assert {"README.md", "docs/README.md", "docs/api.md", "docs/configuration.md"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert dead_links(path) == []


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n\n## Errors\n")
    probe = tmp_path / "docs" / "index.md"
    probe.write_text(
        "[spec](../shared/spec/api.md) [ok](api.md#errors) [bad](api.md#no-such-heading) "
        "[outside](../../etc/passwd) [web](https://example.com/x.md)"
    )
    assert dead_links(probe, root=tmp_path) == [
        "../shared/spec/api.md",
        "api.md#no-such-heading",
        "../../etc/passwd",
    ]
