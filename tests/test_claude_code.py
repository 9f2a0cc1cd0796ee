"""The real Claude Code CLI, headless, against ``advisor-middleware serve`` (the demo gateway).

Runs ``shared/claude-code/ci_acceptance.sh`` (two turns: an advisor consult plus a Bash call,
then ``--continue`` with the advisor blocks in history) and checks its verdict and the turn-1
stream-json output. Needs npm: the pinned CLI (~380 MB) is installed once into the cache dir
and reused. Without npm this test fails; it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .servers import serving

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ACCEPTANCE = SHARED / "claude-code" / "ci_acceptance.sh"
EXECUTOR_MODEL_ID = "claude-sonnet-5-5"  # what Claude Code 2.1.331 sends for --model sonnet
ADVISOR_MODEL_ID = "claude-opus-5-5"  # ... and for --advisor opus


def run_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cc-accept"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def require_acceptance_tools() -> None:
    """Fail (never skip) without npm or the acceptance script."""
    if shutil.which("npm") is None:
        pytest.fail("npm is not on PATH: the Claude Code acceptance test needs npm (and node) to install the CLI")
    if not ACCEPTANCE.is_file():
        pytest.fail(f"{ACCEPTANCE} not found: CI must check out shared/ beside the repository")


def acceptance_runs() -> Path:
    """The acceptance script's run dir, without a previous turn 1 (see require_acceptance_tools)."""
    require_acceptance_tools()
    runs = run_dir()
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "turn1.jsonl").unlink(missing_ok=True)
    return runs


def assert_acceptance_passed(stdout: str, returncode: int, report: str) -> None:
    """``ci_acceptance.sh`` printed ``N passed, 0 failed`` (N >= 7) and exited 0."""
    verdict = re.search(r"^(\d+) passed, (\d+) failed$", stdout, re.MULTILINE)
    assert verdict is not None, report
    passed, failed = int(verdict[1]), int(verdict[2])
    assert failed == 0 and passed >= 7, report
    assert returncode == 0, report


def advisor_blocks(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
    """All content blocks of a stream-json run, its advisor calls and their results (each call
    answered by one result)."""
    blocks = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]]
    calls = [b for b in blocks if b.get("type") == "server_tool_use" and b.get("name") == "advisor"]
    results = [b for b in blocks if b.get("type") == "advisor_tool_result"]
    assert calls and results, [b.get("type") for b in blocks]
    assert {r["tool_use_id"] for r in results} == {c["id"] for c in calls}
    return blocks, calls, results


@pytest.mark.claude_code
def test_claude_code_acceptance(tmp_path: Path) -> None:
    runs = acceptance_runs()
    turn1 = runs / "turn1.jsonl"

    log = tmp_path / "serve.log"
    with serving("--demo-delay", "0", log=log) as (url, _):
        env = {**os.environ, "BASE_URL": url, "ADVISOR_MODEL_ID": ADVISOR_MODEL_ID, "RUN_DIR": str(runs)}
        done = subprocess.run(
            ["bash", str(ACCEPTANCE)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1200,  # a first npm install, then two turns of at most 300 s each
        )
    report = f"ci_acceptance.sh exited {done.returncode}\n{done.stdout}\n{done.stderr}\n--- server log ---\n"
    report += log.read_text()[-4000:]
    sys.stdout.write(done.stdout)  # shown with -s or on failure

    assert_acceptance_passed(done.stdout, done.returncode, report)

    # Turn 1 as Claude Code itself reported it.
    events = load_jsonl(turn1)
    blocks, _, results = advisor_blocks(events)
    assert all(r["content"]["type"] == "advisor_result" and r["content"]["text"] for r in results), results
    result = next(e for e in events if e.get("type") == "result")
    assert result["is_error"] is False, result
    model_usage = result.get("modelUsage") or {}
    assert EXECUTOR_MODEL_ID in model_usage and ADVISOR_MODEL_ID in model_usage, list(model_usage)
    assert model_usage[ADVISOR_MODEL_ID]["outputTokens"] > 0, model_usage
    # The demo executor ran the Bash command once advised.
    tools = [b for b in blocks if b.get("type") == "tool_use"]
    assert [t["name"] for t in tools] == ["Bash"], tools
    assert "echo probe-ok" in tools[0]["input"]["command"]
