"""The ``advisor-middleware`` command: help text, and ``serve`` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

import advisor_middleware
from advisor_middleware import AdvisorMiddleware, HTTPRouter
from advisor_middleware.cli import CLAUDE_CODE, app_from_env, build_app, main
from advisor_middleware.proxy import UpstreamProxy

from .support.claude_code import PINNED
from .support.helpers import ONE_CONSULT, block_types, consult, parse_sse
from .support.servers import ROOT, free_port, server_process, serving, threaded, uvicorn_server
from .support.upstream import ADVISOR_TOOL, Reply, Script, scripted_host, text

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


ADVISOR_REQUEST: dict[str, Any] = {
    "model": "exec",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan the migration."}],
    "tools": [ADVISOR_TOOL],
}


def test_serve_help_explains_the_three_ways_to_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text_ in ("APP", "--upstream URL", "--upstream-timeout", "--app-dir", "mutually exclusive", "examples:"):
        assert text_ in out, text_


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mod:app", "--upstream", "http://127.0.0.1:9"], "argument --upstream: not allowed with argument APP"),
        (["--upstream", "127.0.0.1:4000"], "'127.0.0.1:4000' is not an http:// or https:// URL"),
        (["--upstream", "http://127.0.0.1:4000/?key=1"], "must have no query or fragment"),
    ],
)
def test_serve_refuses(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_build_app_refuses_app_and_upstream_together() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        build_app("mod:app", upstream="http://127.0.0.1:9")


def test_serve_upstream_is_a_proxy_that_runs_the_advisor_loop(tmp_path: Path) -> None:
    script = Script()
    consult(script)
    script.executor(*script.turns["executor"]).advisor(*script.turns["advisor"])  # a second round
    script.direct(Reply([text("plain")]))
    with threaded(uvicorn_server, scripted_host(script)) as upstream:
        with (
            serving("--upstream", upstream, log=tmp_path / "serve.log") as (url, _),
            anthropic.Anthropic(base_url=url, api_key="sk-caller", max_retries=0) as sdk,
        ):
            with sdk.beta.messages.stream(**ADVISOR_REQUEST) as stream:
                streamed = stream.get_final_message()
            created = sdk.beta.messages.create(**ADVISOR_REQUEST)
            plain = sdk.messages.create(model="exec", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            health = httpx.get(url + "/v1/messages")  # forwarded too: the host's own 405

    for message in (streamed, created):
        assert block_types(message.content) == ONE_CONSULT
        assert message.content[2].content.text == "Advice."  # type: ignore[union-attr]
    assert plain.content[0].text == "plain"  # type: ignore[union-attr]
    assert health.status_code == 405
    roles = [r.role for r in script.requests]
    assert roles == ["executor", "advisor", "executor"] * 2 + ["direct"]
    assert {r.headers["authorization"] for r in script.requests} == {"Bearer sk-caller"}
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_serve_upstream_pointed_at_itself_ends_instead_of_looping(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with (
        serving("--upstream", f"http://127.0.0.1:{port}", port=port, log=log) as (url, _),
        anthropic.Anthropic(base_url=url, api_key="sk-caller", max_retries=0) as sdk,
    ):
        for streaming in (True, False):
            with pytest.raises(anthropic.APIStatusError) as info:
                if streaming:
                    with sdk.beta.messages.stream(**ADVISOR_REQUEST) as stream:
                        stream.get_final_message()
                else:
                    sdk.beta.messages.create(**ADVISOR_REQUEST)
            assert info.value.status_code == 508
            assert "loop" in info.value.message
    # executor leg -> this proxy -> itself: the second pass is refused, nothing recurses.
    requests = [line for line in log.read_text().splitlines() if "POST /v1/messages" in line]
    assert len(requests) == 2 * 3, requests  # per call: the client's, the leg's, the leg forwarded once


def test_the_console_script_imports_app_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "hostapp.py").write_text(
        "from advisor_middleware.demo import DemoGateway\napp = DemoGateway(delay=0, advisor_delay=0)\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(SCRIPT), "serve", "hostapp:app", "--port", str(port)]
    with server_process(argv, url, log=tmp_path / "serve.log", cwd=tmp_path):
        events = stream_events(url, {**ADVISOR_REQUEST, "stream": True})
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert block_types(starts) == ONE_CONSULT


def test_workers_build_the_upstream_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {
        "app_path": None,
        "upstream": "http://127.0.0.1:4000",
        "upstream_timeout": 42.0,
        "demo_delay": 0.04,
        "ping_interval": 3.0,
    }
    monkeypatch.setenv("ADVISOR_MIDDLEWARE_SERVE", json.dumps(options))
    app = app_from_env()
    assert isinstance(app, AdvisorMiddleware)
    assert isinstance(app.app, UpstreamProxy) and app.app.base_url == "http://127.0.0.1:4000"
    assert isinstance(app.router, HTTPRouter) and app.router.url == "http://127.0.0.1:4000/v1/messages"
    assert app.router.client is app.app.client
    assert app.app.client.timeout.read == 42.0
    assert app.config.ping_interval == 3.0
    assert app.config.advisor_caching is None


def test_advisor_caching_reaches_the_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"app_path": None, "advisor_caching": "1h"}
    monkeypatch.setenv("ADVISOR_MIDDLEWARE_SERVE", json.dumps(options))
    assert app_from_env().config.advisor_caching == "1h"
    done = subprocess.run(
        [sys.executable, "-m", "advisor_middleware", "serve", "--advisor-caching", "10m"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2 and b"--advisor-caching: invalid choice" in done.stderr


def test_the_upstream_proxy_example_runs() -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GATEWAY_PORT": str(free_port()),
        "PROXY_PORT": str(free_port()),
        "DEMO_DELAY": "0",
    }
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["bash", "examples/upstream_proxy.sh"], cwd=root, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    events = [event for _, event in parse_sse(done.stdout)]
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert block_types(starts) == ONE_CONSULT
    assert starts[2]["content"]["text"].startswith("1. Restate the goal")
    assert events[-1] == {"type": "message_stop"}


# --- a friendly command line ------------------------------------------------------------------


def test_version() -> None:
    done = run(str(SCRIPT), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"advisor-middleware {advisor_middleware.__version__}\n"


@pytest.mark.parametrize(
    ("args", "argument", "wrong"),
    [
        (["--port", "99999"], "argument --port", "'99999' is not a port number"),
        (["--port", "0"], "argument --port", "'0' is not a port number"),
        (["--port", "http"], "argument --port", "'http' is not a port number"),
        (["nonexistent.mod:app"], "argument APP", "no module named 'nonexistent'"),
        (["nonexistent:app"], "argument APP", 'Could not import module "nonexistent"'),
        (["examples.fastapi_app:nope"], "argument APP", 'Attribute "nope" not found'),
        (["mygateway.asgi"], "argument APP", "'mygateway.asgi' is not module:attribute"),
        (["--ping-interval", "-3"], "argument --ping-interval", "'-3' is not a number of seconds above 0"),
        (["--ping-interval", "0"], "argument --ping-interval", "'0' is not a number of seconds above 0"),
        (["--upstream-timeout", "-1"], "argument --upstream-timeout", "is not a number of seconds above 0"),
        (["--demo-delay", "-0.5"], "argument --demo-delay", "'-0.5' is not a number of seconds (0 or more)"),
        (["--workers", "0"], "argument --workers", "'0' is not a whole number of at least 1"),
        (["--app-dir", "no/such/dir", "x:app"], "argument --app-dir", "'no/such/dir' is not a directory"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_argument(args: list[str], argument: str, wrong: str) -> None:
    done = subprocess.run(
        [str(SCRIPT), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no banner
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"advisor-middleware serve: error: {argument}: "), line
    assert wrong in line


def test_an_app_whose_own_import_fails_shows_where(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("import no_such_dependency_here\napp = None\n")
    done = run(str(SCRIPT), "serve", "--app-dir", str(tmp_path), "brokenapp:app")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "no_such_dependency_here" in done.stderr


def test_the_banner_comes_once_the_server_listens(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serving(log=log):
        pass
    text = log.read_text()
    assert text.index("Uvicorn running on") < text.index("advisor-middleware demo gateway on"), text
    # It suggests the Claude Code the suite tests, with two models priced apart.
    assert CLAUDE_CODE == PINNED
    assert f"@anthropic-ai/claude-code@{PINNED})" in text and "--model sonnet --advisor opus" in text


def test_no_banner_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(str(SCRIPT), "serve", "--port", str(port))
    assert done.returncode != 0
    assert "address already in use" in done.stderr
    assert "demo gateway on" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_an_upstream_that_does_not_answer_is_warned_about_once(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    with serving("--upstream", closed, log=log) as (url, _):
        response = httpx.post(url + "/v1/messages", json=ADVISOR_REQUEST, timeout=30)
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "warning:" in line]
    assert warnings == [
        f"advisor-middleware: warning: --upstream {closed} does not answer ([Errno 111] Connection refused); "
        "serving anyway: requests get 502 until it does"
    ], text
    assert text.index("warning:") < text.index("advisor-middleware proxy on")
    assert response.status_code == 502


def test_an_upstream_that_answers_is_not_warned_about(tmp_path: Path) -> None:
    script = Script()
    with threaded(uvicorn_server, scripted_host(script)) as upstream:
        log = tmp_path / "serve.log"
        with serving("--upstream", upstream, log=log):
            pass
    text = log.read_text()
    assert "advisor-middleware proxy on" in text
    assert "warning" not in text.lower(), text
