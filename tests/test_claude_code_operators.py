"""The real Claude Code CLI, two turns, against ``advisor-middleware serve --config`` with the
example settings file (``examples/advisor.toml``): its profile sends Claude Code's advisor alias
to another model, with instructions, and the advisor's tokens are priced under the model that
``report_advisor_model`` names. ``tests.support.cc_host:app`` logs every leg the host receives.

Needs npm, as ``tests/test_claude_code.py`` does; never skipped for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .support.cc_host import LOG_ENV
from .support.claude_code import PINNED, claude_env, install, run_turn, transcript_problems
from .support.servers import ROOT, serving
from .test_claude_code import home_and_work, load_jsonl

pytestmark = pytest.mark.claude_code

ALIAS = "claude-opus-5-5"
"""What ``--advisor opus`` asks for (tests/fixtures/claude-code-*)."""
MAPPED = "demo-advisor-large"
"""The model ``examples/advisor.toml`` sends that alias to, for a premium key."""
INSTRUCTIONS = "Name the file and the command to check first."


@pytest.mark.parametrize("report", ["answered", "requested"])
def test_claude_code_consults_the_profiles_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: str) -> None:
    settings = tmp_path / "advisor.toml"
    example = (ROOT / "examples" / "advisor.toml").read_text()
    settings.write_text(example.replace('report_advisor_model = "answered"', f'report_advisor_model = "{report}"'))
    host_log = tmp_path / "host.jsonl"
    host_log.touch()
    monkeypatch.setenv(LOG_ENV, str(host_log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    binary = install(PINNED)
    home, work = home_and_work(tmp_path)
    serve_log = tmp_path / "serve.log"
    with serving("tests.support.cc_host:app", "--config", str(settings), log=serve_log) as (url, _):
        env = claude_env(url, home, api_key="sk-premium")
        first = run_turn(binary, "Consult the advisor, then say hi", env=env, cwd=work, timeout=120)
        second = run_turn(binary, "Consult the advisor again, then say done.", env=env, cwd=work, extra=("--continue",))
    priced = MAPPED if report == "answered" else ALIAS
    report_text = f"{first.report()}\n{second.report()}\n--- server log ---\n{serve_log.read_text()[-3000:]}"

    for turn in (first, second):
        assert transcript_problems(turn, priced) == [], report_text
        results = turn.blocks("advisor_tool_result")
        assert all(r["content"]["type"] == "advisor_result" for r in results), results
        usage = turn.result()["modelUsage"]
        assert usage[priced]["outputTokens"] > 0, usage
        assert ({MAPPED, ALIAS} - {priced}).isdisjoint(usage), usage
    advisor_legs = [json.loads(r["body"]) for r in load_jsonl(host_log) if r["leg"] == "advisor"]
    assert len(advisor_legs) >= 2, report_text
    assert {leg["model"] for leg in advisor_legs} == {MAPPED}
    assert all(INSTRUCTIONS in leg["system"] and leg["temperature"] == 0.2 for leg in advisor_legs)
