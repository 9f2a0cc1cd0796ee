"""The real Claude Code CLI over three turns, with the executor requests compared across turns.

``python -m advisor_middleware serve tests.support.cc_host:app`` runs the demo gateway behind the
middleware, and ``tests/support/cc_host.py`` logs every request the host receives. Turn 1 consults; turn 2
(``--continue``) consults, runs a Bash command through Claude Code, then answers; turn 3
(``--continue``) answers again. Each turn's first executor request must begin with the messages of
the previous turn's last one, so a provider's prompt cache keeps hitting.

Claude Code moves its ``cache_control`` breakpoints every turn (the client's doing), so those keys
are removed before comparing; nothing else is. Needs npm: the pinned CLI is installed once into
the cache folder ``tests/support/claude_code.py`` names. Without npm this test fails; it is never
skipped.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from .support.claude_code import PINNED, Turn, claude_env, install, run_turn
from .test_claude_code import home_and_work, load_jsonl, logging_host

TURNS = [
    ("Consult the advisor, then say hi", ()),
    ("Consult the advisor, then run: echo two", ("--continue",)),
    ("Now say done.", ("--continue",)),
]
NATIVE = (b'"server_tool_use"', b'"advisor_tool_result"', b'"advisor_20260301"', b'"tool_addition"')


def without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_control(v) for v in value]
    return value


def executor_legs(turn: Turn) -> list[dict[str, Any]]:
    return [r for r in turn.requests if r["leg"] == "executor"]


def encoded_messages(record: dict[str, Any]) -> str:
    """A logged request's ``messages``, cache breakpoints removed, as compact JSON in sent order."""
    messages = without_cache_control(json.loads(record["body"])["messages"])
    return json.dumps(messages, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.claude_code
def test_claude_code_turns_extend_the_previous_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = install(PINNED)
    home, work = home_and_work(tmp_path)
    turns: list[Turn] = []
    with logging_host(tmp_path, monkeypatch) as (url, host_log):
        env = claude_env(url, home)
        for prompt, extra in TURNS:
            seen = len(load_jsonl(host_log))
            turn = run_turn(binary, prompt, env=env, cwd=work, extra=extra, timeout=120)
            turn.requests = load_jsonl(host_log)[seen:]
            turns.append(turn)
    report = "\n".join(f"turn {n}: rc={t.returncode} stderr={t.stderr[-1000:]}" for n, t in enumerate(turns, 1))
    report += "\n--- server log ---\n" + (tmp_path / "serve.log").read_text()[-3000:]

    for n, turn in enumerate(turns, 1):
        assert turn.returncode == 0, report
        assert turn.result()["is_error"] is False, (n, turn.result())
        calls = turn.blocks("server_tool_use")
        results = turn.blocks("advisor_tool_result")
        assert calls, f"turn {n} did not consult"
        assert [r["tool_use_id"] for r in results] == [c["id"] for c in calls], (n, calls, results)
        assert all(r["content"]["type"] == "advisor_result" for r in results), results
        assert executor_legs(turn), f"turn {n}: no executor leg reached the host"
        for request in turn.requests:
            assert not any(marker in request["body"].encode() for marker in NATIVE), request["body"][:500]

    # Turn 2 ran the command through Claude Code, after the consult, and answered from its output.
    (bash,) = turns[1].blocks("tool_use")
    assert bash["name"] == "Bash"
    assert bash["input"]["command"] == "echo two"
    (output,) = turns[1].blocks("tool_result")
    assert output["tool_use_id"] == bash["id"]
    assert "two" in json.dumps(output["content"])
    assert len(executor_legs(turns[1])) >= 3  # consult; Bash call; answer after the tool result

    # Each turn's first executor request begins with the previous turn's last one, byte for byte.
    for n, (before, after) in enumerate(itertools.pairwise(turns), 2):
        last = encoded_messages(executor_legs(before)[-1])
        first = encoded_messages(executor_legs(after)[0])
        assert first.startswith(last[:-1] + ","), f"turn {n}:\n{last}\n---\n{first}"
