"""The real Claude Code CLI, two turns through ``advisor-middleware serve --advisor-caching 5m``
around the demo gateway, whose advisor is billed by Anthropic's prompt-cache rule: the advisor
legs carry cache breakpoints (Claude Code never sends the tool's ``caching``), and Claude Code
prices the cached advisor tokens under the advisor's model. Needs npm, like the other Claude
Code tests; never skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support.claude_code import PINNED, claude_env, install, run_turn
from .test_claude_code import home_and_work, load_jsonl, logging_host


@pytest.mark.claude_code
def test_claude_code_prices_cached_advisor_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = install(PINNED)
    home, work = home_and_work(tmp_path)
    with logging_host(tmp_path, monkeypatch, "--advisor-caching", "5m") as (url, host_log):
        env = claude_env(url, home)
        first = run_turn(binary, "Consult the advisor, then say hi", env=env, cwd=work, timeout=120)
        extra = ("--continue",)
        second = run_turn(
            binary, "Consult the advisor again, then say bye", env=env, cwd=work, extra=extra, timeout=120
        )
        legs = [json.loads(r["body"]) for r in load_jsonl(host_log) if r["leg"] == "advisor"]
    report = f"{first.report()}\n{second.report()}\n" + (tmp_path / "serve.log").read_text()[-3000:]
    assert first.advisor_calls() and second.advisor_calls(), report
    (advisor_id,) = {leg["model"] for leg in legs}
    for leg in legs:
        marks = [b["cache_control"] for b in leg["messages"][0]["content"] if "cache_control" in b]
        assert marks == [{"type": "ephemeral", "ttl": "5m"}] * 2, leg["messages"][0]["content"]
    # modelUsage adds up over the session (--continue): turn 2's figures are the differences.
    first_usage = first.result()["modelUsage"][advisor_id]
    both = second.result()["modelUsage"][advisor_id]
    second_usage = {key: both[key] - first_usage[key] for key in ("cacheReadInputTokens", "inputTokens", "costUSD")}
    assert first_usage["cacheReadInputTokens"] == 0 and first_usage["cacheCreationInputTokens"] > 1024, report
    assert second_usage["cacheReadInputTokens"] == first_usage["cacheCreationInputTokens"], (first_usage, both)
    # Priced under the advisor's model, the reads at its cache rate: turn 2 costs a fraction of
    # what turn 1 paid to write the same tokens.
    assert 0 < second_usage["costUSD"] < first_usage["costUSD"] / 4, (first_usage, both)
