"""The repository stands alone: no code, test, doc or CI file refers to a path outside it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"__pycache__", "node_modules", "build", "dist"}
"""Besides every folder whose name starts with a dot but .ci (.git, .venv, .nox, tool caches), and
a worktree's ``.git`` file."""

OUTSIDE = re.compile(
    r"/wor[k]/"  # absolute paths of one machine (the class keeps a grep for the path off this line)
    r"|/root/|/home/\w"
    r"|\.\./shared|(?<![\w.-])shared/"  # a sibling folder beside the checkout
)


def repository_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any((p.startswith(".") and p != ".ci") or p in SKIPPED_DIRS for p in parts[:-1]):
            continue
        if path.is_file() and path.name != ".git" and path.suffix not in (".pyc", ".gz"):
            yield path


def test_the_walk_sees_code_tests_docs_and_ci() -> None:
    seen = {p.relative_to(ROOT).as_posix() for p in repository_files()}
    assert {"README.md", ".ci/run", "pyproject.toml", "tests/test_self_contained.py", "docs/usage.md"} <= seen


def lines_matching(pattern: re.Pattern[str], suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every line of the repository's text files (of those suffixes, if given) that ``pattern``
    finds something in, as ``path:number: line``; never this file, which holds the patterns."""
    found = []
    for path in repository_files():
        if path == Path(__file__).resolve() or (suffixes is not None and path.suffix not in suffixes):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:160]}")
    return found


def test_nothing_refers_to_a_path_outside_the_repository() -> None:
    found = lines_matching(OUTSIDE)
    assert found == [], "\n".join(found)


WORK_LOG = re.compile(
    r"\b(issue|round|step)s? #?\d"  # a work item's number: its history belongs in git
    r"|advisor-wire-spec|asgi-ecosystem|claude-code-client|design §"  # documents outside the repository
    r"|instructions per|\d instructions\b",  # instruction counts are no reason a reader can check
    re.IGNORECASE,
)


def test_comments_and_docs_cite_nothing_a_reader_cannot_follow() -> None:
    found = lines_matching(WORK_LOG, (".py", ".md", ".toml", ""))
    assert found == [], "\n".join(found)
