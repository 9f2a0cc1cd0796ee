"""The real Claude Code CLI through ``advisor-middleware serve --upstream`` in front of LiteLLM's
proxy, whose models are scripted OpenAI-compatible servers.

    Claude Code ──► advisor-middleware serve --upstream ──► LiteLLM proxy (uvicorn, config.yaml)
                                                             ├─ claude-sonnet-5-5 → hosted_vllm/cc-exec
                                                             └─ claude-opus-5-5   → hosted_vllm/cc-adv

Both legs reach LiteLLM over HTTP with Claude Code's key (LiteLLM's master key here), and LiteLLM
translates each to Chat Completions. Claude Code runs two turns (a consult plus a Bash call, then
``--continue``) and its own report is checked, including the advisor priced under its own model in
``modelUsage``. Needs npm (the pinned CLI is installed once into the cache folder, as in
``test_claude_code.py``); without it this test fails, it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from .support.claude_code import PINNED, Turn, claude_env, install, run_turn, transcript_problems
from .support.litellm_config import Deployment, write_config
from .support.openai_backend import ChatScript, openai_host
from .support.servers import ROOT, SERVER_COMMANDS, free_port, server_process, serving, uvicorn_server
from .support.upstream import Reply, text, tool_use

pytestmark = [pytest.mark.claude_code, pytest.mark.anyio]

MASTER_KEY = "sk-master-cc-5e8d1f0a2b7c"
EXECUTOR_MODEL_ID = "claude-sonnet-5-5"  # what Claude Code sends for --model sonnet
ADVISOR_MODEL_ID = "claude-opus-5-5"  # ... and for --advisor opus
PRICES = {"cc-exec": (3e-6, 15e-6), "cc-adv": (15e-6, 75e-6)}

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _calls(message: dict[str, Any]) -> list[str]:
    return [str(call["function"]["name"]) for call in message.get("tool_calls") or []]


def executor(body: dict[str, Any]) -> Reply:
    """Claude Code's executor, reading a Chat Completions request as a model would: in the
    current turn (after the last user prompt), consult the advisor first; then run the command
    the prompt asks for with Bash; then answer."""
    messages = body["messages"]
    prompts = [
        i for i, m in enumerate(messages) if m["role"] == "user" and _REMINDER.sub("", _text(m["content"])).strip()
    ]
    start = prompts[-1] if prompts else 0
    prompt = _REMINDER.sub("", _text(messages[start]["content"]))
    called = [name for m in messages[start:] if m["role"] == "assistant" for name in _calls(m)]
    tools = {t["function"]["name"] for t in body.get("tools") or []}
    if "advisor" in tools and "advisor" not in called:
        return Reply([text("Let me consult the advisor first."), tool_use("advisor")], stop_reason="tool_use")
    command = re.search(r"\brun:\s*(.+?)\s*$", prompt, re.MULTILINE)
    if command and "Bash" in tools and "Bash" not in called:
        call = tool_use("Bash", {"command": command.group(1), "description": "Run the requested command"})
        return Reply([call], stop_reason="tool_use")
    return Reply([text("Done, as advised.")])


def advisor(body: dict[str, Any]) -> Reply:
    assert not body.get("tools"), "the advisor leg carries no tools"
    return Reply([text("1. Run the command.\n2. Check it printed probe-ok.")], input_tokens=900, output_tokens=30)


@contextmanager
def litellm_proxy(config: Path, log: Path, legs: Path) -> Iterator[str]:
    """LiteLLM's proxy app under uvicorn in a subprocess, configured by ``config``; its
    callback appends every call it logs to ``legs``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [arg.format(app="litellm.proxy.proxy_server:app", port=port) for arg in SERVER_COMMANDS["uvicorn"]]
    env = {**os.environ, "CONFIG_FILE_PATH": str(config), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LEG_LOG": str(legs)}
    # From the repository root, so the config's tests.support.litellm_support hooks import.
    with server_process([*argv, "--log-level", "warning"], url, log=log, cwd=ROOT, env=env):
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def two_turns(url: str, tmp_path: Path) -> list[Turn]:
    """Turn 1 consults and runs a Bash command; turn 2 continues with the advisor blocks in history."""
    binary = install(PINNED)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = claude_env(url, home, api_key=MASTER_KEY)
    first = run_turn(binary, "Consult the advisor, then run: echo probe-ok", env=env, cwd=work)
    return [first, run_turn(binary, "Now say done.", env=env, cwd=work, extra=("--continue",))]


async def test_claude_code_through_serve_upstream_and_litellm(tmp_path: Path) -> None:
    chat = ChatScript(responders={"cc-exec": executor, "cc-adv": advisor})
    legs = tmp_path / "legs.jsonl"
    async with uvicorn_server(openai_host(chat)) as backend:
        deployments = {
            EXECUTOR_MODEL_ID: Deployment("hosted_vllm/cc-exec", backend + "/v1", "backend-key", PRICES["cc-exec"]),
            ADVISOR_MODEL_ID: Deployment("hosted_vllm/cc-adv", backend + "/v1", "backend-key", PRICES["cc-adv"]),
        }
        config = write_config(tmp_path / "config.yaml", deployments, master_key=MASTER_KEY)
        litellm_log, serve_log = tmp_path / "litellm.log", tmp_path / "serve.log"
        # Start-up polls block this loop for a few seconds; the backend is idle until Claude Code runs.
        with (
            litellm_proxy(config, litellm_log, legs) as litellm_url,
            serving("--upstream", litellm_url, log=serve_log) as (url, _),
        ):
            first, second = await anyio.to_thread.run_sync(two_turns, url, tmp_path)
    report = f"turn 1: {first.report()}\nturn 2: {second.report()}\n"
    report += f"--- serve log ---\n{serve_log.read_text()[-3000:]}\n"
    report += f"--- LiteLLM log ---\n{litellm_log.read_text()[-6000:]}"

    assert transcript_problems(first, ADVISOR_MODEL_ID) == [], report
    assert second.returncode == 0 and second.result()["is_error"] is False, report

    # Turn 1 as Claude Code reported it: a consult, then Bash, each advisor call answered.
    calls, results = first.advisor_calls(), first.blocks("advisor_tool_result")
    assert all(r["content"] == {"type": "advisor_result", "text": results[0]["content"]["text"]} for r in results)
    assert "probe-ok" in results[0]["content"]["text"]
    assert [b["input"]["command"] for b in first.blocks("tool_use")] == ["echo probe-ok"]
    usage = first.result()["modelUsage"]
    assert usage[ADVISOR_MODEL_ID]["inputTokens"] == 900 * len(calls)
    assert usage[ADVISOR_MODEL_ID]["outputTokens"] == 30 * len(calls)
    # What LiteLLM sent its backends: Chat Completions, the advisor as a function tool.
    executor_legs, advisor_legs = chat.of("cc-exec"), chat.of("cc-adv")
    assert len(executor_legs) >= 4 and len(advisor_legs) >= 2  # turn 1: 3 + 1, turn 2: 2 + 1
    for leg in chat.requests:
        assert b"advisor_20260301" not in leg.raw
    assert all(
        any(t["type"] == "function" and t["function"]["name"] == "advisor" for t in leg.body["tools"])
        for leg in executor_legs
    )

    # LiteLLM's callback saw every leg under Claude Code's key, each leg under its own model.
    logged = [json.loads(line) for line in legs.read_text().splitlines()]
    # (LiteLLM records the master key as "litellm_proxy_master_key", never the key or its hash.)
    assert {(c["outcome"], c["key_hash"]) for c in logged} == {("success", "litellm_proxy_master_key")}, logged
    groups = [c["model_group"] for c in logged]
    assert groups.count(EXECUTOR_MODEL_ID) == len(executor_legs)
    assert groups.count(ADVISOR_MODEL_ID) == len(advisor_legs)
    advisor_cost = PRICES["cc-adv"][0] * 900 + PRICES["cc-adv"][1] * 30
    assert all(c["cost"] == pytest.approx(advisor_cost) for c in logged if c["model_group"] == ADVISOR_MODEL_ID)
