"""The advisor's own prompt caching: with the tool's ``caching`` (or the operator's
``advisor_caching``) each consult's advisor leg marks its newest settled block boundary, so a
cache-faithful Anthropic host reads the previous consult's prompt from cache, within a request
and across turns; without it no ``cache_control`` reaches the advisor, and a byte-prefix cache
hits anyway. Each ``advisor_message`` iteration carries the host's cache figures."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.demo import DemoGateway
from advisor_middleware.demo_cache import ImplicitPrefixCache, PromptCache

from .support.helpers import ONE_CONSULT, assistant, block_types, call, request_body, sdk_for, tool_result, user
from .support.upstream import ADVISOR_TOOL, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
SYSTEM = "You are a careful coding agent. " * 300  # about 2,400 tokens: the head is cacheable
CACHING_5M = {**ADVISOR_TOOL, "caching": {"type": "ephemeral", "ttl": "5m"}}
SWITCHES = [
    pytest.param({"tools": [CACHING_5M]}, {}, "5m", id="tool-caching"),
    pytest.param({}, {"advisor_caching": "1h"}, "1h", id="operator-option"),
]


def consults(script: Script, n: int) -> None:
    """The executor runs a tool-less step and asks the advisor ``n`` times, then answers."""
    steps = [
        Reply([text(f"Step {i}: " + "working " * 200), tool_use("advisor", id=f"toolu_{i}")], stop_reason="tool_use")
        for i in range(n)
    ]
    script.executor(*steps, Reply([text("Done.")])).advisor(*(Reply([text(f"Advice {i}.")]) for i in range(n)))


def advisor_iterations(message: Any) -> list[dict[str, Any]]:
    usage = message.usage.model_dump()
    return [it for it in usage["iterations"] if it["type"] == "advisor_message"]


def marked(script: Script) -> list[list[int]]:
    """For each advisor leg, the indices of its user message's blocks with a breakpoint."""
    out = []
    for leg in script.of("advisor"):
        (message,) = leg.body["messages"]
        out.append([i for i, block in enumerate(message["content"]) if "cache_control" in block])
    return out


def assert_reads_what_the_last_consult_cached(script: Script) -> None:
    """From the second consult on, the host reads the whole prefix the previous one cached."""
    billed = script.billed
    assert billed[0]["cache_read_input_tokens"] == 0 and billed[0]["cache_creation_input_tokens"] > 2000
    for before, after in itertools.pairwise(billed):
        cached = before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        assert after["cache_read_input_tokens"] == cached


def assert_iterations_match(message: Any, script: Script, ttl: str) -> None:
    iterations = advisor_iterations(message)
    assert len(iterations) == len(script.billed)
    for iteration, billed in zip(iterations, script.billed, strict=True):
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation"):
            assert iteration[key] == billed[key], key
        assert billed["cache_creation"][f"ephemeral_{ttl}_input_tokens"] == billed["cache_creation_input_tokens"]


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(("overrides", "options", "ttl"), SWITCHES)
async def test_consults_in_one_request_read_the_previous_one_from_cache(
    make_app: MakeApp, script: Script, streaming: bool, overrides: dict[str, Any], options: dict[str, Any], ttl: str
) -> None:
    script.cache = PromptCache()
    consults(script, 3)
    async with sdk_for(make_app(**options)) as sdk:
        message = await call(sdk, streaming, **request_body([user("Fix the bug.")], system=SYSTEM, **overrides))
    assert block_types(message.content) == ["text", *ONE_CONSULT[1:3]] * 3 + ["text"]
    # The head and the newest boundary (the last block: the transcript ends at the call).
    sizes = [len(leg.body["messages"][0]["content"]) for leg in script.of("advisor")]
    assert marked(script) == [[0, size - 1] for size in sizes] and sizes == [2, 3, 4]
    for leg in script.of("advisor"):
        marks = [b["cache_control"] for b in leg.body["messages"][0]["content"] if "cache_control" in b]
        assert marks == [{"type": "ephemeral", "ttl": ttl}] * 2
    assert_reads_what_the_last_consult_cached(script)
    assert_iterations_match(message, script, ttl)


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(("overrides", "options", "ttl"), SWITCHES)
async def test_the_first_consult_of_a_turn_reads_the_last_one_of_the_turn_before(
    make_app: MakeApp, script: Script, streaming: bool, overrides: dict[str, Any], options: dict[str, Any], ttl: str
) -> None:
    # Turn 1 consults, then calls a client tool; turn 2 carries the tool's result, and the
    # executor consults again: one settled block later.
    script.cache = PromptCache()
    bash = tool_use("Bash", {"command": "pytest"}, id="toolu_B")
    script.executor(
        Reply([text("Looking. " + "reading " * 200), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Running the tests."), bash], stop_reason="tool_use"),
        Reply([text("They fail. " + "thinking " * 200), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("Fixed.")]),
    ).advisor(Reply([text("Run the tests first.")]), Reply([text("Fix the import.")]))
    history = [user("Fix the bug.")]
    async with sdk_for(make_app(**options)) as sdk:
        params = request_body(history, system=SYSTEM, **overrides)
        first = await call(sdk, streaming, **params)
        assert first.stop_reason == "tool_use"
        replayed = [block.model_dump(exclude_none=True) for block in first.content]
        history += [assistant(replayed), user([tool_result("toolu_B", "1 failed: ImportError " + "trace " * 300)])]
        second = await call(sdk, streaming, **{**params, "messages": history})
    one, two = ([b["text"] for b in leg.body["messages"][0]["content"]] for leg in script.of("advisor"))
    assert two[:2] == one and len(two) == 3  # a block-granular prefix
    assert_reads_what_the_last_consult_cached(script)
    assert_iterations_match(first, Script(billed=script.billed[:1]), ttl)
    assert_iterations_match(second, Script(billed=script.billed[1:]), ttl)


@pytest.mark.parametrize("streaming", [True, False])
async def test_without_caching_no_breakpoint_reaches_the_advisor(
    make_app: MakeApp, script: Script, streaming: bool
) -> None:
    # The explicit cache then never hits; a byte-prefix cache does, from the second consult on.
    for cache in (PromptCache(), ImplicitPrefixCache()):
        script.cache, script.billed = cache, []
        consults(script, 3)
        async with sdk_for(make_app()) as sdk:
            message = await call(sdk, streaming, **request_body([user("Fix the bug.")], system=SYSTEM))
        assert_iterations_match_host(message, script)
        reads = [billed["cache_read_input_tokens"] for billed in script.billed]
        if isinstance(cache, PromptCache):
            assert reads == [0, 0, 0]
        else:
            assert reads[0] == 0 and all(
                read > 0.85 * billed["input_tokens"] for read, billed in zip(reads[1:], script.billed[1:], strict=True)
            )
    for leg in script.of("advisor"):
        assert b"cache_control" not in leg.raw


def assert_iterations_match_host(message: Any, script: Script) -> None:
    for iteration, billed in zip(advisor_iterations(message), script.billed, strict=True):
        assert iteration["cache_read_input_tokens"] == billed["cache_read_input_tokens"]
        assert iteration["input_tokens"] == billed["input_tokens"]


async def test_over_the_budget_the_cached_prefix_survives_consult_after_consult(
    make_app: MakeApp, script: Script
) -> None:
    # A long conversation over the transcript budget, then eight consults that each add a
    # step: the cut moves in large steps, so nearly every consult reads all the previous one
    # cached; where the cut moves, the head's breakpoint still reads the head.
    script.cache = PromptCache()
    consults(script, 8)
    history: list[Any] = []
    for n in range(40):
        history += [user(f"Question {n}: " + "q" * 900), assistant(f"Answer {n}: " + "a" * 900)]
    body = request_body([*history, user("Go on.")], system=SYSTEM, tools=[CACHING_5M])
    async with sdk_for(make_app(max_transcript_chars=40_000)) as sdk:
        message = await call(sdk, True, **body)
    billed = script.billed
    transcripts = ["".join(b["text"] for b in leg.body["messages"][0]["content"]) for leg in script.of("advisor")]
    assert all(len(t) <= 40_000 for t in transcripts) and "earlier messages left out" in transcripts[0]
    full_hits = 0
    for before, after in itertools.pairwise(billed):
        cached = before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        full_hits += after["cache_read_input_tokens"] == cached
        assert after["cache_read_input_tokens"] >= len(SYSTEM) // 4  # the head, at least
    assert full_hits >= 5, billed
    assert_iterations_match(message, script, "5m")
    assert json.dumps(message.usage.model_dump()["iterations"]).count("advisor_message") == 8


@pytest.mark.parametrize("streaming", [True, False])
async def test_the_demo_gateway_bills_its_advisor_with_the_cache_rule(streaming: bool) -> None:
    # Two turns through the offline demo with the operator's switch on: the second turn's
    # consult reads from cache all the first one wrote.
    app = AdvisorMiddleware(DemoGateway(delay=0, advisor_delay=0), advisor_caching="1h")
    history: list[Any] = [user("Say hi.")]
    iterations = []
    async with sdk_for(app) as sdk:
        for question in ("Say hi.", "Now say bye."):
            if question != history[-1]["content"]:
                history.append(user(question))
            message = await call(sdk, streaming, **request_body(history, model="demo", system=SYSTEM))
            history.append(assistant([block.model_dump(exclude_none=True) for block in message.content]))
            (iteration,) = advisor_iterations(message)
            iterations.append(iteration)
    first, second = iterations
    assert first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": first["cache_creation_input_tokens"],
    }
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"] > len(SYSTEM) // 4
    assert second["input_tokens"] == 0  # the transcript ends at the newest breakpoint


@pytest.mark.parametrize(
    ("profile", "options", "overrides", "ttl"),
    [
        pytest.param("1h", {}, {}, "1h", id="profile-on"),
        pytest.param("1h", {"advisor_caching": "5m"}, {"tools": [CACHING_5M]}, "1h", id="profile-over-both"),
        pytest.param("off", {"advisor_caching": "5m"}, {"tools": [CACHING_5M]}, None, id="profile-off"),
        pytest.param(None, {"advisor_caching": "5m"}, {}, "5m", id="profile-follows"),
    ],
)
async def test_a_profiles_caching_comes_before_the_operators_and_the_tools(
    make_app: MakeApp,
    script: Script,
    profile: str | None,
    options: dict[str, Any],
    overrides: dict[str, Any],
    ttl: str | None,
) -> None:
    from advisor_middleware import AdvisorProfile

    consults(script, 2)
    profiles = [AdvisorProfile.model_validate({"match": "*", "models": ["adv-model"], "caching": profile})]
    async with sdk_for(make_app(advisor_profiles=profiles, **options)) as sdk:
        await call(sdk, True, **request_body([user("Fix the bug.")], system=SYSTEM, **overrides))
    for leg in script.of("advisor"):
        marks = [b["cache_control"] for b in leg.body["messages"][0]["content"] if "cache_control" in b]
        assert marks == ([] if ttl is None else [{"type": "ephemeral", "ttl": ttl}] * 2)
    assert len(script.of("advisor")) == 2
