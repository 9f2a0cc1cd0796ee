"""What the advisor's prompt caching saves, in tokens: a scripted Claude-Code-like session through
``AdvisorMiddleware`` around the tests' scripted host, its advisor billed by a cache-faithful prompt
cache (``advisor_middleware.demo_cache``), ``caching`` off and on."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.demo_cache import ImplicitPrefixCache, PromptCache
from tests.support.upstream import ADVISOR_TOOL, Reply, Script, scripted_host, text, tool_use

RATES = {"input": 5.0, "read": 0.50, "5m": 6.25}
"""USD per million advisor input tokens: full rate, read from cache, written for 5 minutes."""
RATES_NOTE = "Claude Opus 4.8 rates, Anthropic's pricing page as read on 2026-12-06"
BASH = {"name": "Bash", "description": "Run a shell command.", "input_schema": {"type": "object"}}
TURNS = ("ACAAB", "ACACAB", "ACAB")
"""Each turn's executor legs: A consults the advisor, C calls Bash (the client runs it), B ends
the turn; so 3, 3 and 2 consults."""


@dataclass(frozen=True)
class CacheRun:
    host: str
    """"explicit" (Anthropic's rule) or "implicit" (byte prefixes)."""
    caching: bool
    consults: list[dict[str, Any]]
    """The ``advisor_message`` iterations of the session, in order."""

    def tokens(self, first: int = 0) -> tuple[int, int, int]:
        """Advisor input tokens at full rate, read from cache and written, from consult ``first``."""
        full, read, written = (sum(it[key] for it in self.consults[first:]) for key in _KEYS)
        return full, read, written

    def read_share(self, first: int = 0) -> float:
        full, read, written = self.tokens(first)
        return read / max(1, full + read + written)

    def dollars(self) -> float:
        full, read, written = self.tokens()  # written for 5 minutes: advisor_caching="5m"
        return (full * RATES["input"] + read * RATES["read"] + written * RATES["5m"]) / 1e6


_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _prose(rng: random.Random, chars: int) -> str:
    """About ``chars`` characters of words."""
    return " ".join(rng.choices(("the", "test", "fails", "as", "config", "loader", "returns", "None"), k=chars // 6))


def _script(rng: random.Random) -> Script:
    script = Script()
    for n, legs in enumerate(TURNS):
        for m, leg in enumerate(legs):
            words = text(f"Turn {n} step {m}: " + _prose(rng, 1500))
            if leg == "A":
                script.executor(Reply([words, tool_use("advisor", id=f"toolu_a{n}{m}")], stop_reason="tool_use"))
                script.advisor(Reply([text("1. Check the loader first. 2. Then rerun the tests.")], output_tokens=600))
            elif leg == "C":
                bash = tool_use("Bash", {"command": "pytest -x"}, id=f"toolu_b{n}{m}")
                script.executor(Reply([words, bash], stop_reason="tool_use"))
            else:
                script.executor(Reply([words]))
    return script


async def run_session(host: str, caching: bool) -> CacheRun:
    """One session: an earlier conversation of about 45k tokens, then the three turns, each
    Bash call answered with about 7k tokens of output."""
    rng = random.Random(7)
    script = _script(rng)
    script.cache = PromptCache() if host == "explicit" else ImplicitPrefixCache()
    app = scripted_host(script)
    options: dict[str, Any] = {"advisor_caching": "5m"} if caching else {}
    app.add_middleware(AdvisorMiddleware, **options)
    system = "You are Claude Code, an interactive coding agent. " + _prose(rng, 60_000)
    params = {"model": "exec", "max_tokens": 4096, "system": system, "tools": [BASH, ADVISOR_TOOL]}
    history: list[dict[str, Any]] = []
    for n in range(10):
        history += [{"role": "user", "content": f"Earlier request {n}: " + _prose(rng, 200)}]
        history += [{"role": "assistant", "content": _prose(rng, 18_000)}]
    consults: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
        for n in range(len(TURNS)):
            history.append({"role": "user", "content": f"Turn {n}: fix the failing test. " + _prose(rng, 2000)})
            while True:
                body = {**params, "messages": history}
                message = (await client.post("/v1/messages", json=body)).raise_for_status().json()
                consults += [it for it in message["usage"]["iterations"] if it["type"] == "advisor_message"]
                history.append({"role": "assistant", "content": message["content"]})
                if message["stop_reason"] != "tool_use":
                    break
                call = message["content"][-1]["id"]
                output = {"type": "tool_result", "tool_use_id": call, "content": _prose(rng, 28_000)}
                history.append({"role": "user", "content": [output]})
    return CacheRun(host, caching, consults)


async def measure_cache() -> list[CacheRun]:
    return [await run_session(host, caching) for host in ("explicit", "implicit") for caching in (False, True)]


def cache_section(runs: list[CacheRun]) -> tuple[str, str, list[str], list[list[str]]]:
    """The title, intro, head and rows of the results' table."""
    first, last = (sum(runs[0].consults[at][key] for key in _KEYS) for at in (0, -1))
    intro = (
        f"A scripted Claude-Code-like session: 3 turns, {len(runs[0].consults)} consults, the advisor's transcript "
        f"growing from {_k(first)} to {_k(last)} tokens. Advisor input tokens, and their price at {RATES_NOTE}: "
        f"${RATES['input']:.2f} per million at full rate, ${RATES['read']:.2f} read from cache, ${RATES['5m']:.2f} "
        'written for 5 minutes. `caching` on is the operator\'s `advisor_caching="5m"`. The explicit host follows '
        "Anthropic's rule; the implicit one reads the longest byte prefix shared with any earlier request, in "
        "1,024-token steps."
    )
    head = ["Host", "`caching`", "Full rate", "Read", "Written", "Read, consult 2 on", "Read, session", "Input $"]
    rows = []
    for run in runs:
        full, read, written = run.tokens()
        row = [run.host, "on" if run.caching else "off", _k(full), _k(read), _k(written)]
        rows.append([*row, f"{run.read_share(1):.0%}", f"{run.read_share():.0%}", f"${run.dollars():.2f}"])
    return "Advisor prompt caching", intro, head, rows


def _k(tokens: int) -> str:
    return f"{tokens / 1000:,.1f}k"
