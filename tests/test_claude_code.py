"""The real Claude Code CLI, headless, against ``advisor-middleware serve`` around the demo gateway.

Two turns: "Consult the advisor, then run: echo probe-ok" (an advisor consult, then a Bash call),
then ``--continue`` with the advisor blocks in the history. Claude Code's own stream-json report
must show each advisor call answered by one known result, no error, and the advisor priced under
its own model in ``modelUsage``. ``tests.support.cc_host:app`` logs each leg the host receives, which
names the models Claude Code asked for.

Runs the pinned version and the newest one npm serves today. Needs npm: each version (~380 MB) is
installed once into the cache folder ``tests/support/claude_code.py`` names. Without npm these
tests fail; they are never skipped for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .fixtures.record import record
from .support.cc_host import LOG_ENV
from .support.claude_code import (
    PINNED,
    Turn,
    claude_env,
    install,
    newest_version,
    run_turn,
    transcript_problems,
)
from .support.servers import ROOT, serving

pytestmark = pytest.mark.claude_code

PROMPT = "Consult the advisor, then run: echo probe-ok"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Acceptance:
    version: str
    turns: list[Turn]
    legs: list[dict[str, Any]]
    """Every request the host received, as ``tests/support/cc_host.py`` logs it."""

    def leg_models(self, leg: str) -> set[str]:
        """The models the host was asked for on ``leg`` ("executor" or "advisor") legs."""
        return {str(json.loads(r["body"])["model"]) for r in self.legs if r["leg"] == leg}

    def leg_model(self, leg: str) -> str:
        (model,) = self.leg_models(leg)
        return model

    def problems(self) -> list[str]:
        """What Claude Code ``version`` reported wrong, over both turns."""
        first, second = self.turns
        advisors = self.leg_models("advisor")
        problems = [] if len(advisors) == 1 else [f"the host saw advisor legs for {sorted(advisors)}, not one model"]
        problems += [f"turn 1: {p}" for p in transcript_problems(first, min(advisors, default=None))]
        if second.returncode != 0 or second.result().get("is_error") is not False:
            problems.append(f"turn 2 (--continue, the advisor blocks in history) failed: {second.report()}")
        return problems


@contextmanager
def logging_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str) -> Iterator[tuple[str, Path]]:
    """``advisor-middleware serve tests.support.cc_host:app [OPTIONS]`` (log: ``serve.log`` in
    ``tmp_path``); yields its URL and the file it logs each request of the host to."""
    host_log = tmp_path / "host.jsonl"
    host_log.touch()
    monkeypatch.setenv(LOG_ENV, str(host_log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with serving("tests.support.cc_host:app", *options, log=tmp_path / "serve.log") as (url, _):
        yield url, host_log


def home_and_work(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh HOME and working directory for Claude Code."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


def accept(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Acceptance:
    """Runs the two turns with Claude Code ``version`` against the logging demo host."""
    binary = install(version)
    home, work = home_and_work(tmp_path)
    with logging_host(tmp_path, monkeypatch) as (url, host_log):
        env = claude_env(url, home)
        first = run_turn(binary, PROMPT, env=env, cwd=work)
        second = run_turn(binary, "Now say done.", env=env, cwd=work, extra=("--continue",))
    return Acceptance(version, [first, second], load_jsonl(host_log))


def test_the_pinned_claude_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = accept(PINNED, tmp_path, monkeypatch)
    report = "\n".join(run.problems()) + "\n--- server log ---\n" + (tmp_path / "serve.log").read_text()[-3000:]
    assert run.problems() == [], report
    first = run.turns[0]
    # Two models, priced apart: the executor's and the advisor's.
    executor_id, advisor_id = run.leg_model("executor"), run.leg_model("advisor")
    assert executor_id != advisor_id
    usage = first.result()["modelUsage"]
    assert {executor_id, advisor_id} <= set(usage), list(usage)
    assert usage[advisor_id]["outputTokens"] > 0, usage
    results = first.blocks("advisor_tool_result")
    assert all(r["content"]["type"] == "advisor_result" and r["content"]["text"] for r in results), results
    # The demo executor ran the Bash command once advised, and Claude Code ran it.
    (bash,) = first.blocks("tool_use")
    assert bash["name"] == "Bash" and "echo probe-ok" in bash["input"]["command"], bash
    (output,) = first.blocks("tool_result")
    assert "probe-ok" in str(output["content"])


def test_the_newest_claude_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newest = newest_version()
    numbers = [tuple(int(part) for part in v.split(".")) for v in (PINNED, newest)]
    assert numbers[0] <= numbers[1], f"the pin {PINNED} is ahead of the newest Claude Code on npm, {newest}"
    if newest == PINNED:
        return  # test_the_pinned_claude_code runs it
    problems = accept(newest, tmp_path, monkeypatch).problems()
    assert problems == [], (
        f"Claude Code {newest}, the newest on npm, fails where the pinned {PINNED} passes:\n" + "\n".join(problems)
    )


def test_the_fixture_recorder_captures_advisor_history(tmp_path: Path) -> None:
    log = record("probe", ["Consult the advisor, then say hi", "Now say done."], tmp_path, keep=200)
    first, second = load_jsonl(log)
    assert first["path"].startswith("/v1/messages") and "advisor-tool-2026-03-01" in first["headers"]["anthropic-beta"]
    assert first["body"]["tools"][-1]["type"] == "advisor_20260301"
    replayed = [b["type"] for m in second["body"]["messages"] if isinstance(m["content"], list) for b in m["content"]]
    assert {"server_tool_use", "advisor_tool_result"} <= set(replayed), replayed
    assert "x-claude-code-session-id" not in {k.lower() for k in second["headers"]}
    assert all(
        len(t["text"]) <= 200 + len("...[+99999 chars]")
        for m in first["body"]["messages"]
        if isinstance(m["content"], list)
        for t in m["content"]
        if t.get("type") == "text"
    )
