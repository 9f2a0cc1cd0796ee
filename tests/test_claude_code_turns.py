"""The real Claude Code CLI over three turns, with the executor requests compared across turns.

``python -m advisor_middleware serve tests.cc_host:app`` runs the demo gateway behind the
middleware, and ``tests/cc_host.py`` logs every request the host receives. Turn 1 consults; turn 2
(``--continue``) consults, runs a Bash command through Claude Code, then answers; turn 3
(``--continue``) answers again. Each turn's first executor request must begin with the messages of
the previous turn's last one, so a provider's prompt cache keeps hitting.

Claude Code moves its ``cache_control`` breakpoints every turn (the client's doing), so those keys
are removed before comparing; nothing else is. Needs npm: the pinned CLI is installed once into
the cache dir, like ``shared/claude-code/ci_acceptance.sh`` does. Without npm this test fails; it
is never skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .cc_host import LOG_ENV
from .servers import serving
from .test_claude_code import load_jsonl, run_dir

ROOT = Path(__file__).resolve().parents[1]
VERSION = "2.1.331"
TURNS = [
    ("Consult the advisor, then say hi", []),
    ("Consult the advisor, then run: echo two", ["--continue"]),
    ("Now say done.", ["--continue"]),
]
NATIVE = (b'"server_tool_use"', b'"advisor_tool_result"', b'"advisor_20260301"', b'"tool_addition"')


def claude_binary() -> Path:
    """The pinned CLI in the cache dir, installed there first if it is missing."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not on PATH: the Claude Code test needs npm (and node) to install the CLI")
    prefix = run_dir() / "cc"
    binary = prefix / "node_modules" / ".bin" / "claude"
    if binary.exists():
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout
        if version.startswith(f"{VERSION} "):
            return binary
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    install = [
        "npm",
        "install",
        "--prefix",
        str(prefix),
        f"@anthropic-ai/claude-code@{VERSION}",
        "--no-audit",
        "--no-fund",
    ]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"npm install failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return binary


def without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_control(v) for v in value]
    return value


def encoded_messages(record: dict[str, Any]) -> str:
    """A logged request's ``messages``, cache breakpoints removed, as compact JSON in sent order."""
    messages = without_cache_control(json.loads(record["body"])["messages"])
    return json.dumps(messages, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Turn:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    requests: list[dict[str, Any]]
    """What the host received during this turn."""

    def blocks(self, kind: str) -> list[dict[str, Any]]:
        """Claude Code's own record of the content blocks of this ``kind`` in its stream-json output."""
        return [
            b
            for e in self.events
            if e.get("type") in ("assistant", "user") and isinstance(e["message"]["content"], list)
            for b in e["message"]["content"]
            if b.get("type") == kind
        ]

    def executor_legs(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["leg"] == "executor"]


@pytest.mark.claude_code
def test_claude_code_turns_extend_the_previous_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = claude_binary()
    host_log = tmp_path / "host.jsonl"
    host_log.touch()
    monkeypatch.setenv(LOG_ENV, str(host_log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    turns: list[Turn] = []
    with serving("tests.cc_host:app", log=tmp_path / "serve.log") as (url, _):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update(
            HOME=str(home),
            ANTHROPIC_BASE_URL=url,
            ANTHROPIC_API_KEY="sk-test",
            DISABLE_TELEMETRY="1",
            DISABLE_AUTOUPDATER="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            CLAUDE_CODE_ENABLE_EXPERIMENTAL_ADVISOR_TOOL="1",
        )
        for prompt, extra in TURNS:
            seen = len(load_jsonl(host_log))
            argv = [str(binary), "-p", prompt, "--model", "sonnet", "--advisor", "opus"]
            argv += ["--allowedTools", "Bash(echo:*)", "--output-format", "stream-json", "--verbose", *extra]
            done = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
            )
            events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            turns.append(Turn(done.returncode, events, done.stderr, load_jsonl(host_log)[seen:]))
    report = "\n".join(f"turn {n}: rc={t.returncode} stderr={t.stderr[-1000:]}" for n, t in enumerate(turns, 1))
    report += "\n--- server log ---\n" + (tmp_path / "serve.log").read_text()[-3000:]

    for n, turn in enumerate(turns, 1):
        assert turn.returncode == 0, report
        outcome = next(e for e in turn.events if e.get("type") == "result")
        assert outcome["is_error"] is False, (n, outcome)
        calls = turn.blocks("server_tool_use")
        results = turn.blocks("advisor_tool_result")
        assert calls, f"turn {n} did not consult"
        assert [r["tool_use_id"] for r in results] == [c["id"] for c in calls], (n, calls, results)
        assert all(r["content"]["type"] == "advisor_result" for r in results), results
        assert turn.executor_legs(), f"turn {n}: no executor leg reached the host"
        for request in turn.requests:
            assert not any(marker in request["body"].encode() for marker in NATIVE), request["body"][:500]

    # Turn 2 ran the command through Claude Code, after the consult, and answered from its output.
    (bash,) = turns[1].blocks("tool_use")
    assert bash["name"] == "Bash"
    assert bash["input"]["command"] == "echo two"
    (output,) = turns[1].blocks("tool_result")
    assert output["tool_use_id"] == bash["id"]
    assert "two" in json.dumps(output["content"])
    assert len(turns[1].executor_legs()) >= 3  # consult; Bash call; answer after the tool result

    # Each turn's first executor request begins with the previous turn's last one, byte for byte.
    for n, (before, after) in enumerate(itertools.pairwise(turns), 2):
        last = encoded_messages(before.executor_legs()[-1])
        first = encoded_messages(after.executor_legs()[0])
        assert first.startswith(last[:-1] + ","), f"turn {n}:\n{last}\n---\n{first}"
