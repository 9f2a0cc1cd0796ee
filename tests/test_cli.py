"""The ``advisor-middleware`` command: help text, and ``serve`` as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from .helpers import ONE_CONSULT, block_types
from .servers import serving

SCRIPT = Path(sys.executable).with_name("advisor-middleware")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_console_script_is_installed() -> None:
    assert SCRIPT.exists(), f"{SCRIPT} missing: is the package installed (pip install -e .) in this venv?"


def test_help() -> None:
    done = run(str(SCRIPT), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: advisor-middleware")
    assert "advisor_20260301" in done.stdout
    assert "serve" in done.stdout


def test_serve_help() -> None:
    done = run(str(SCRIPT), "serve", "--help")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("usage: advisor-middleware serve")
    for option in ("--host", "--port", "--workers", "--ping-interval", "--demo-delay", "--log-level"):
        assert option in out, option
    assert "demo gateway" in out


def test_no_command_prints_help_and_fails() -> None:
    done = run(str(SCRIPT))
    assert done.returncode == 2
    assert "serve" in done.stdout


def stream_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``curl -sN`` would show, parsed: the data of every SSE event."""
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", url + "/v1/messages", json=body, timeout=30.0) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def test_serve_answers_an_advisor_request(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serving("--demo-delay", "0", log=log) as (url, proc):
        events = stream_events(
            url,
            {
                "model": "demo-executor",
                "max_tokens": 1024,
                "stream": True,
                "messages": [{"role": "user", "content": "Plan a birthday party"}],
                "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}],
            },
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, log.read_text()

    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert block_types(starts) == ONE_CONSULT
    call, result = starts[1], starts[2]
    assert call["name"] == "advisor" and call["id"].startswith("srvtoolu_")
    assert result["tool_use_id"] == call["id"]
    assert result["content"]["type"] == "advisor_result"
    assert "Plan a birthday party" in result["content"]["text"]
    delta = next(e for e in events if e["type"] == "message_delta")
    iterations = delta["usage"]["iterations"]
    assert [i["type"] for i in iterations] == ["message", "advisor_message", "message"]
    assert iterations[1]["model"] == "demo-advisor"
    assert events[-1] == {"type": "message_stop"}

    text = log.read_text()
    assert "curl -sN" in text  # the demo explains itself
    assert "POST /v1/messages HTTP/1.1" in text and "200" in text
    assert "Finished server process" in text
    assert "Traceback" not in text
