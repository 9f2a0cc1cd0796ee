"""Operators in control of the advisor: profiles, the fallback chain, the policy hook, the
settings file and ``native_executor`` patterns, through ``AdvisorMiddleware`` around the scripted
Starlette host (which fails per model as told) and the demo gateway, with the SDK as the oracle.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import pytest
from anthropic.types.beta import BetaMessage
from fastapi import FastAPI
from starlette.applications import Starlette

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.cli import build_app
from advisor_middleware.profiles import AdvisorProfile, ConsultContext, PolicyDecision
from advisor_middleware.settings_file import ConfigFileError, load_config
from examples.advisor_policy import policy as example_policy

from .support.helpers import ONE_CONSULT, block_types, call, http_for, parse_sse, post, sdk_for
from .support.servers import ROOT, serving
from .support.upstream import ErrorEvent, Fail, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
ALIAS = "claude-opus-5-5"
"""The advisor model Claude Code asks for (tests/fixtures/claude-code-*)."""
EXAMPLE = ROOT / "examples" / "advisor.toml"


def params(advisor: str = ALIAS, **tool: Any) -> dict[str, Any]:
    return {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Plan the migration."}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": advisor, **tool}],
    }


def asks(script: Script, times: int = 1) -> None:
    """The executor calls the advisor ``times`` times in one leg, then answers."""
    calls = [tool_use("advisor", id=f"toolu_{n}") for n in range(times)]
    script.executor(Reply([text("Asking."), *calls], stop_reason="tool_use"), Reply([text("Done.")]))


def chain(*models: str, **settings: Any) -> tuple[AdvisorProfile, ...]:
    return (AdvisorProfile(match="claude-opus-*", models=models, **settings),)


def results(message: BetaMessage) -> list[dict[str, Any]]:
    """The content of each advisor_tool_result."""
    blocks = message.model_dump(exclude_none=True)["content"]
    return [b["content"] for b in blocks if b["type"] == "advisor_tool_result"]


def advisor_iterations(message: BetaMessage) -> list[tuple[str, int]]:
    iterations = message.usage.model_dump()["iterations"]
    return [(it["model"], it["input_tokens"]) for it in iterations if it["type"] == "advisor_message"]


def advisor_models(script: Script) -> list[str]:
    return [r.body["model"] for r in script.of("advisor")]


async def consult_once(app: Any, streaming: bool, key: str = "sk-test", **overrides: Any) -> BetaMessage:
    async with sdk_for(app) as sdk:
        return await call(sdk.with_options(api_key=key), streaming, **{**params(), **overrides})


# --- profiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("report", ["answered", "requested"])
async def test_a_profile_sends_the_alias_to_its_model(
    make_app: MakeApp, script: Script, streaming: bool, report: str
) -> None:
    asks(script)
    script.model("adv-b", Reply([text("Advice from b.")], input_tokens=77))
    profiles = chain(
        "adv-b", instructions="Check the rollback plan.", max_tokens=2000, params={"temperature": 0.2, "top_k": 5}
    )
    app = make_app(advisor_profiles=profiles, report_advisor_model=report)
    message = await consult_once(app, streaming)

    assert block_types(message.content) == ONE_CONSULT
    assert results(message) == [{"type": "advisor_result", "text": "Advice from b."}]
    (leg,) = script.of("advisor")
    assert leg.body["model"] == "adv-b"
    assert leg.body["system"].endswith("\n\nCheck the rollback plan.")
    assert (leg.body["max_tokens"], leg.body["temperature"], leg.body["top_k"]) == (2000, 0.2, 5)
    assert advisor_iterations(message) == [("adv-b" if report == "answered" else ALIAS, 77)]


async def test_the_tools_max_tokens_wins_over_the_profiles(make_app: MakeApp, script: Script) -> None:
    asks(script)
    script.model("adv-b", Reply([text("Advice.")]))
    app = make_app(advisor_profiles=chain("adv-b", max_tokens=2000))
    await consult_once(app, True, tools=params(max_tokens=3000)["tools"])
    assert script.of("advisor")[0].body["max_tokens"] == 3000


def test_a_profile_may_not_set_what_the_middleware_sets() -> None:
    with pytest.raises(ValueError, match="max_tokens, model: set by the middleware"):
        AdvisorProfile(match="*", models=("a",), params={"model": "x", "max_tokens": 1, "temperature": 1})


@pytest.mark.parametrize("unmatched", ["as_requested", "refuse"])
async def test_an_advisor_no_profile_matches(make_app: MakeApp, script: Script, unmatched: str) -> None:
    asks(script)
    script.advisor(Reply([text("Advice as requested.")]))
    app = make_app(advisor_profiles=chain("adv-b"), unmatched_advisor=unmatched)
    message = await consult_once(app, True, tools=params("gpt-advisor")["tools"])

    assert block_types(message.content) == ONE_CONSULT  # the request goes on either way
    if unmatched == "refuse":
        assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "model_not_found"}]
        assert advisor_models(script) == []
    else:
        assert results(message) == [{"type": "advisor_result", "text": "Advice as requested."}]
        assert advisor_models(script) == ["gpt-advisor"]


async def test_a_refused_model_name_is_logged_short_and_on_one_line(
    make_app: MakeApp, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    # The name is the client's: at INFO only a bounded, escaped prefix of it.
    caplog.set_level(logging.INFO, "advisor_middleware")
    asks(script)
    name = "gpt-advisor\nFORGED LOG LINE " + "x" * 100_000
    app = make_app(advisor_profiles=chain("adv-b"), unmatched_advisor="refuse")
    message = await consult_once(app, True, tools=params(name)["tools"])
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "model_not_found"}]
    (logged,) = [r.getMessage() for r in caplog.records if "matches no profile" in r.getMessage()]
    assert "\n" not in logged and len(logged) < 300, logged[:400]


# --- the fallback chain ------------------------------------------------------------------------

FAILURES = {
    "overloaded": Fail(529, "overloaded_error"),
    "too_many_requests": Fail(429, "rate_limit_error"),
    "unavailable": Fail(500, "api_error"),
    "execution_time_exceeded": Fail(504, "timeout_error"),
}


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("code", sorted(FAILURES))
async def test_the_next_model_answers_when_the_first_fails(
    make_app: MakeApp, script: Script, streaming: bool, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    asks(script)
    script.model("adv-a", FAILURES[code]).model("adv-b", Reply([text("Advice from b.")], input_tokens=21))
    caplog.set_level(logging.INFO, "advisor_middleware")
    message = await consult_once(make_app(advisor_profiles=chain("adv-a", "adv-b")), streaming)

    assert block_types(message.content) == ONE_CONSULT  # one consult, whatever it took
    assert results(message) == [{"type": "advisor_result", "text": "Advice from b."}]
    assert advisor_models(script) == ["adv-a", "adv-b"]
    assert advisor_iterations(message) == [("adv-b", 21)]  # the failed attempt billed nothing
    attempts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("advisor attempt")]
    assert [a.split(", ")[:2] for a in attempts] == [
        ["advisor attempt 1/2: model adv-a", code],
        ["advisor attempt 2/2: model adv-b", "answered"],
    ]


@pytest.mark.parametrize("streaming", [True, False])
async def test_when_every_model_fails_the_last_code_is_the_result(
    make_app: MakeApp, script: Script, streaming: bool
) -> None:
    asks(script)
    script.model("adv-a", FAILURES["overloaded"]).model("adv-b", FAILURES["too_many_requests"])
    message = await consult_once(make_app(advisor_profiles=chain("adv-a", "adv-b")), streaming)

    assert block_types(message.content) == ONE_CONSULT
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "too_many_requests"}]
    assert advisor_models(script) == ["adv-a", "adv-b"]


async def test_a_code_not_listed_for_fallback_ends_the_consult(make_app: MakeApp, script: Script) -> None:
    asks(script)
    script.model("adv-a", Fail(413, "request_too_large")).model("adv-b", Reply([text("Never asked.")]))
    message = await consult_once(make_app(advisor_profiles=chain("adv-a", "adv-b")), True)
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "prompt_too_long"}]
    assert advisor_models(script) == ["adv-a"]


async def test_fallback_on_is_the_profiles_choice(make_app: MakeApp, script: Script) -> None:
    asks(script)
    script.model("adv-a", Fail(404, "not_found_error")).model("adv-b", Reply([text("Advice from b.")]))
    app = make_app(advisor_profiles=chain("adv-a", "adv-b", fallback_on={"model_not_found"}))
    message = await consult_once(app, True)
    assert results(message) == [{"type": "advisor_result", "text": "Advice from b."}]


async def test_an_attempt_that_ran_is_billed_under_its_model(make_app: MakeApp, script: Script) -> None:
    # The first model starts its answer, then is overloaded: its sub-inference is billed too.
    asks(script)
    script.model("adv-a", ErrorEvent(Reply([text("Half")], input_tokens=13), after=3))
    script.model("adv-b", Reply([text("Advice from b.")], input_tokens=21))
    message = await consult_once(make_app(advisor_profiles=chain("adv-a", "adv-b")), True)
    assert results(message) == [{"type": "advisor_result", "text": "Advice from b."}]
    assert advisor_iterations(message) == [("adv-a", 13), ("adv-b", 21)]


@pytest.mark.parametrize("streaming", [True, False])
async def test_the_consults_time_budget_covers_every_attempt(
    make_app: MakeApp, script: Script, streaming: bool
) -> None:
    # The first model never answers within the budget: the consult ends there, the second model
    # is not tried, and the executor goes on.
    asks(script)
    script.model("adv-a", Reply([text("Too late.")], delay=600)).model("adv-b", Reply([text("Never asked.")]))
    app = make_app(advisor_profiles=chain("adv-a", "adv-b", timeout=0.5), advisor_timeout=600)
    with anyio.fail_after(120):  # a generous bound: the budget ends the consult, not this
        message = await consult_once(app, streaming)
    assert block_types(message.content) == ONE_CONSULT
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "execution_time_exceeded"}]
    assert advisor_models(script) == ["adv-a"]


async def test_a_fallback_gets_only_what_is_left_of_the_budget(make_app: MakeApp, script: Script) -> None:
    # Each model alone fits the budget; the two one after the other do not. The consult ends with
    # an error, never the second model's advice (a fresh budget per attempt would give it).
    asks(script)
    script.model("adv-a", Fail(529, "overloaded_error", delay=0.6))
    script.model("adv-b", Reply([text("Too late.")], delay=0.8))
    app = make_app(advisor_profiles=chain("adv-a", "adv-b", timeout=1.0))
    with anyio.fail_after(120):
        message = await consult_once(app, True)
    (result,) = results(message)
    assert result["type"] == "advisor_tool_result_error"
    assert result["error_code"] in ("execution_time_exceeded", "overloaded")  # "overloaded": a slow first attempt


# --- the policy hook ---------------------------------------------------------------------------


async def async_policy(context: ConsultContext) -> PolicyDecision | None:
    await anyio.lowlevel.checkpoint()
    return example_policy(context)


@pytest.mark.parametrize("hook", [example_policy, async_policy], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # premium: the requested alias and its profile; others: the economy profile
        ("sk-premium", ["advisor", "advisor", "advisor"]),
        ("sk-other", ["cheap", "cheap", "cheap"]),
        # a trial key gets one consult per request, the others max_uses_exceeded
        ("sk-trial", ["cheap", "max_uses_exceeded", "max_uses_exceeded"]),
    ],
)
async def test_the_policy_decides_per_key(
    script: Script, hook: Callable[[ConsultContext], Any], key: str, expected: list[str]
) -> None:
    asks(script, times=3)
    script.model("adv-strong", *[Reply([text("advisor")])] * 3).model("adv-cheap", *[Reply([text("cheap")])] * 3)
    profiles = (
        AdvisorProfile(match=ALIAS, models=("adv-strong",)),
        AdvisorProfile(match="advisor-economy", models=("adv-cheap",), max_tokens=1024),
    )
    app = AdvisorMiddleware(scripted_host(script), advisor_profiles=profiles, advisor_policy=hook)
    message = await consult_once(app, True, key=key)
    got = [r.get("text") or r.get("error_code") for r in results(message)]
    assert got == expected
    assert {r.headers["authorization"] for r in script.of("advisor")} <= {f"Bearer {key}"}


async def test_what_the_policy_does_to_the_usage_it_sees_is_not_billed(script: Script) -> None:
    def meddle(context: ConsultContext) -> None:
        for entry in context.iterations:
            assert isinstance(entry, dict)  # a Mapping to type checkers; a policy may still write
            entry["input_tokens"] = 0

    asks(script, times=2)
    script.advisor(Reply([text("one")], input_tokens=3), Reply([text("two")], input_tokens=4))
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=meddle)
    message = await consult_once(app, False)
    assert [tokens for _, tokens in advisor_iterations(message)] == [3, 4]


async def test_the_policy_sees_the_request(script: Script) -> None:
    seen: list[ConsultContext] = []

    def record(context: ConsultContext) -> PolicyDecision:
        seen.append(context)
        return PolicyDecision.override(max_tokens=1500)

    asks(script, times=2)
    script.advisor(Reply([text("one")], input_tokens=3), Reply([text("two")], input_tokens=4))
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=record)
    await consult_once(app, False, key="sk-seen")

    assert [(c.consult, c.executor_model, c.advisor_model, c.headers["authorization"]) for c in seen] == [
        (1, "exec", ALIAS, "Bearer sk-seen"),
        (2, "exec", ALIAS, "Bearer sk-seen"),
    ]
    assert [it["type"] for it in seen[1].iterations] == ["message", "advisor_message"]
    assert [r.body["max_tokens"] for r in script.of("advisor")] == [1500, 1500]


async def test_the_policy_reads_a_repeated_header_as_the_host_does(script: Script) -> None:
    # A caller sends its key twice: the host authenticates the first value, so the policy
    # (a per-key cap here) must judge that one too, not the last.
    seen: list[str] = []

    def record(context: ConsultContext) -> PolicyDecision | None:
        seen.append(context.headers["x-api-key"])
        return example_policy(context)

    asks(script, times=2)
    script.advisor(Reply([text("one")]), Reply([text("two")]))
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=record)
    keys = [("x-api-key", "sk-trial"), ("x-api-key", "sk-other")]
    async with http_for(app) as http:
        answer = await http.post("/v1/messages", json=params(), headers=keys)
    (leg, *_) = script.of("executor")
    assert seen == [leg.headers["x-api-key"]] * 2 == ["sk-trial"] * 2
    codes = [b["content"].get("error_code") for b in answer.json()["content"] if b["type"] == "advisor_tool_result"]
    assert codes == [None, "max_uses_exceeded"]  # the trial key's cap of one consult holds


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_policy_that_raises_ends_the_consult_not_the_request(
    script: Script, streaming: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(context: ConsultContext) -> PolicyDecision:
        raise RuntimeError("policy bug")

    asks(script)
    script.advisor(Reply([text("Advice.")]))
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=broken)
    message = await consult_once(app, streaming)
    assert block_types(message.content) == ONE_CONSULT
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "unavailable"}]
    assert advisor_models(script) == []
    assert any(r.exc_info and "policy" in r.getMessage() for r in caplog.records)


async def test_a_policy_that_never_answers_ends_the_consult_within_the_budget(script: Script) -> None:
    # A hook awaiting a quota service that hangs: the consult, not the request, waits no
    # longer than advisor_timeout.
    async def hangs(context: ConsultContext) -> PolicyDecision:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    asks(script)
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=hangs, advisor_timeout=0.2)
    with anyio.fail_after(30):
        message = await consult_once(app, True)
    assert block_types(message.content) == ONE_CONSULT
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "execution_time_exceeded"}]
    assert advisor_models(script) == []


async def test_a_policy_that_answers_nonsense_ends_the_consult(script: Script) -> None:
    asks(script)
    script.advisor(Reply([text("Advice.")]))
    app = AdvisorMiddleware(scripted_host(script), advisor_policy=cast(Any, lambda context: "yes"))
    message = await consult_once(app, True)
    assert results(message) == [{"type": "advisor_tool_result_error", "error_code": "unavailable"}]
    assert advisor_models(script) == []


# --- native_executor patterns ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "native"), [("claude-native-1", True), ("exec", False)])
async def test_native_executor_patterns(script: Script, model: str, native: bool) -> None:
    script.direct(Reply([text("Natively.")]))
    asks(script)
    script.advisor(Reply([text("Advice.")]))
    app = AdvisorMiddleware(scripted_host(script), native_executor=["other-*", "claude-native-*"])
    response = await post(app, json={**params(), "model": model})
    assert response.status_code == 200
    assert [r.role for r in script.requests] == (["direct"] if native else ["executor", "advisor", "executor"])


# --- the settings file -------------------------------------------------------------------------


def test_the_example_file_loads() -> None:
    options = load_config(EXAMPLE)
    assert options["native_executor"] == ("claude-native-*",)
    assert options["advisor_policy"] is example_policy
    assert [p.match for p in options["advisor_profiles"]] == ["claude-opus-*", "advisor-economy", "demo-*"]


@pytest.mark.parametrize("key", ["sk-premium", "sk-demo"])
async def test_the_example_file_serves_the_demo(key: str) -> None:
    app = build_app(None, config=str(EXAMPLE), demo_delay=0)
    message = await consult_once(app, True, key=key)
    assert block_types(message.content) == ONE_CONSULT
    assert results(message)[0]["type"] == "advisor_result"
    model = "demo-advisor-large" if key == "sk-premium" else "demo-advisor-small"
    assert [m for m, _ in advisor_iterations(message)] == [model]


WRONG_FILES = [
    ("[[profiles]]\nmatch = 'x'\nmodels = []\n", "profiles[0].models: Tuple should have at least 1 item"),
    ("[[profiles]]\nmatch = 'x'\nmodels = ['a']\n[[profiles]]\nmodels = ['b']\n", "profiles[1].match: required key"),
    ("[[profiles]]\nmatch = 'x'\nmodels = ['a']\nmodles = 1\n", "profiles[0].modles: unknown key"),
    ("[[profiles]]\nmatch = 'x'\nmodels = ['a']\nparams = {stream = false}\n", "profiles[0].params: stream: set by"),
    (
        "[[profiles]]\nmatch = 'x'\nmodels = ['a']\nfallback_on = ['busy']\n",
        "profiles[0].fallback_on[0]: Input should be",
    ),
    ("advisor_timeout = -1\n", "advisor_timeout: Input should be greater than 0"),
    ("unmatched_advisor = 'drop'\n", "unmatched_advisor: Input should be 'as_requested' or 'refuse'"),
    ("native_executor = 'claude-*'\n", "native_executor: a callable or a list of model patterns"),
    ("advisor_profiles = []\n", "advisor_profiles: unknown key (in a file it is profiles)"),
    ("policy = 'no_such_module_here:policy'\n", "policy: cannot import 'no_such_module_here:policy'"),
    ("policy = 3\n", "policy: Input should be callable"),
    ("advisor_timeout = \n", "not valid TOML: Invalid value (at line 1, column 19)"),
    (b"# caf\xe9\nadvisor_timeout = 5\n", "not valid TOML: not UTF-8"),
    ("policy = '..:policy'\n", "policy: cannot import '..:policy'"),  # importlib's TypeError
]


@pytest.mark.parametrize(("text_", "wrong"), WRONG_FILES)
def test_a_wrong_file_is_one_line_naming_the_key(tmp_path: Path, text_: str | bytes, wrong: str) -> None:
    path = tmp_path / "advisor.toml"
    path.write_bytes(text_ if isinstance(text_, bytes) else text_.encode())
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {wrong}"), message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"advisor.toml: cannot read it \(No such file or directory\)"):
        load_config(tmp_path / "advisor.toml")


def test_serve_refuses_a_wrong_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "advisor.toml"
    path.write_text("[[profiles]]\nmatch = 'claude-opus-*'\nmodels = []\n")
    done = subprocess.run(
        [sys.executable, "-m", "advisor_middleware", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"advisor-middleware serve: error: argument --config: {path}: profiles[0].models: "), line


def test_serve_runs_the_example_file(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    body = {**params(), "stream": True, "model": "demo-executor"}
    with serving("--config", "examples/advisor.toml", "--demo-delay", "0", log=log) as (url, _):
        answer = httpx.post(url + "/v1/messages", json=body, headers={"x-api-key": "sk-premium"}, timeout=60)
    assert answer.status_code == 200, log.read_text()
    delta = next(data for name, data in parse_sse(answer.content) if name == "message_delta")
    advisor = [it["model"] for it in delta["usage"]["iterations"] if it["type"] == "advisor_message"]
    assert advisor == ["demo-advisor-large"]


async def test_a_fastapi_gateway_takes_the_files_options(script: Script) -> None:
    # The Python way to use a settings file: add_middleware(AdvisorMiddleware, **load_config(...)).
    gateway = FastAPI()
    gateway.mount("/", scripted_host(script))
    gateway.add_middleware(AdvisorMiddleware, **load_config(EXAMPLE))
    asks(script)
    script.model("demo-advisor-small", Reply([text("Three points.")]))
    message = await consult_once(gateway, False, key="sk-other")
    assert results(message) == [{"type": "advisor_result", "text": "Three points."}]
    (leg,) = script.of("advisor")
    assert leg.body["system"].endswith("\n\nBe brief: at most three points.")
    assert leg.body["max_tokens"] == 1024
