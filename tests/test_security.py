"""Security: nothing a client sends picks where a leg goes or with which credentials; the caller's
credentials reach the configured router only; bodies and advice are never logged at INFO; legs
cannot recurse.

Already covered elsewhere, not repeated here: redirects are never followed and a ``base_url`` on
the tool is noise (test_http_router.py ``test_credentials_go_to_the_base_url_only``); cookies
never cross callers (``test_cookies_set_by_the_upstream_never_reach_another_caller``); a leg
through a second middleware is passed through (``test_a_leg_through_a_second_middleware_is_not_
orchestrated_again``); a marked request is untouched (test_passthrough.py ``test_a_leg_request_
passes_through_untouched``); ``serve --upstream`` pointed at itself ends with a 508 (test_cli.py
``test_serve_upstream_pointed_at_itself_ends_instead_of_looping``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from advisor_middleware import AdvisorMiddleware, HTTPRouter
from advisor_middleware.routers import AppRouter

from .support.helpers import ADVISOR_PARAMS, ONE_CONSULT, answer_content, block_types, logged_fields, post
from .support.servers import uvicorn_server
from .support.upstream import ADVISOR_TOOL, ErrorEvent, Fail, Reply, Script, Turn, scripted_host, text, tool_use
from .test_http_router import Decoy

pytestmark = pytest.mark.anyio

CALLER = {"x-api-key": "sk-caller-key", "authorization": "Bearer sk-caller-token", "anthropic-version": "2023-06-01"}


def request(tool: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {**ADVISOR_PARAMS, "tools": [tool], **overrides}


def consult(script: Script, advice: str = "Advice.") -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_S")], stop_reason="tool_use"), Reply([text("Done.")])
    ).advisor(Reply([text(advice)]))


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_urls_and_keys_on_the_tool_are_ignored_and_the_callers_credentials_go_to_the_router_only(
    script: Script, streaming: bool
) -> None:
    decoy = Decoy()
    consult(script)
    async with uvicorn_server(scripted_host(script)) as upstream, uvicorn_server(decoy) as decoy_url:
        tool = {
            **ADVISOR_TOOL,
            "model": decoy_url + "/v1/messages",  # a model name is a name, never a URL
            "api_base": decoy_url,
            "base_url": decoy_url,
            "api_key": "sk-attacker",
            "headers": {"authorization": "Bearer sk-attacker"},
            "url": decoy_url,
        }
        router = HTTPRouter(upstream)
        app = AdvisorMiddleware(scripted_host(Script()), router=router)
        response = await post(app, json=request(tool, stream=streaming), headers=CALLER)
        await router.aclose()

    assert response.status_code == 200
    assert block_types(answer_content(response, streaming)) == ONE_CONSULT
    assert decoy.calls == []
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    for leg in script.requests:
        assert leg.headers["x-api-key"] == "sk-caller-key"
        assert leg.headers["authorization"] == "Bearer sk-caller-token"
        assert b"sk-attacker" not in leg.raw
        assert decoy_url.encode() not in leg.raw or leg.role == "advisor"
    # The advisor leg names the model as given, in the body; the extra fields went nowhere.
    advisor = script.of("advisor")[0].body
    assert advisor["model"] == decoy_url + "/v1/messages"
    assert set(advisor) <= {"model", "max_tokens", "system", "messages", "stream", "metadata"}


async def test_the_callers_credentials_never_reach_the_host_of_a_default_router_by_another_way(
    script: Script,
) -> None:
    # With the default AppRouter the legs stay in-process: the host app sees the caller's headers
    # (its own auth applies) and nothing goes out on the network at all.
    decoy = Decoy()
    consult(script)
    async with uvicorn_server(decoy) as decoy_url:
        tool = {**ADVISOR_TOOL, "api_base": decoy_url, "api_key": "sk-attacker"}
        response = await post(AdvisorMiddleware(scripted_host(script)), json=request(tool), headers=CALLER)
    assert response.status_code == 200
    assert decoy.calls == []
    assert {r.headers["x-api-key"] for r in script.requests} == {"sk-caller-key"}


BODY_SECRET = "BODY-7f3a9c-the-launch-codes"
SYSTEM_SECRET = "SYSTEM-c41d-never-log-me"
ADVICE_SECRET = "ADVICE-9e2b-rotate-the-keys"


@pytest.mark.parametrize(
    "case",
    ["consult", "advisor-fails", "executor-fails-later", "executor-fails-first"],
)
async def test_bodies_and_advice_are_never_logged_at_info(
    script: Script, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    consult_turns: dict[str, tuple[Turn, Turn]] = {
        "consult": (Reply([text("Done.")]), Reply([text(ADVICE_SECRET)])),
        "advisor-fails": (Reply([text("Done.")]), Fail(500, "api_error", "upstream broke")),
        "executor-fails-later": (ErrorEvent(Reply([text("x")]), after=2), Reply([text(ADVICE_SECRET)])),
    }
    if case == "executor-fails-first":
        script.executor(Fail(429, "rate_limit_error", "slow down"))
    else:
        second, advisor = consult_turns[case]
        script.executor(Reply([text("Asking."), tool_use("advisor", id="toolu_S")], stop_reason="tool_use"), second)
        script.advisor(advisor)
    body = request(
        ADVISOR_TOOL,
        system=SYSTEM_SECRET,
        stream=True,
        messages=[{"role": "user", "content": f"Here it is: {BODY_SECRET}"}],
    )
    with caplog.at_level(logging.INFO):  # every logger, tracebacks included
        response = await post(AdvisorMiddleware(scripted_host(script)), json=body, headers=CALLER)
    assert response.status_code == (429 if case == "executor-fails-first" else 200)
    # The message of every record, and the fields of the leg and request records.
    logged = caplog.text + "".join(logged_fields(record) for record in caplog.records)
    assert any(hasattr(record, "leg") for record in caplog.records), "the leg records were scanned"
    for secret in (BODY_SECRET, SYSTEM_SECRET, ADVICE_SECRET, "sk-caller-key", "sk-caller-token"):
        assert secret not in logged, f"{secret} was logged:\n{logged}"
    if case in ("advisor-fails", "executor-fails-later"):
        assert "advisor_middleware" in logged, "the failure is logged (without the body)"


async def test_a_leg_that_re_enters_the_same_middleware_cannot_recurse(script: Script) -> None:
    # A router that sends every leg back through this very middleware (the outermost app): each
    # leg carries x-advisor-leg, so it passes through to the host once, and the loop ends.
    consult(script)
    app = AdvisorMiddleware(scripted_host(script))
    app.router = AppRouter(app)
    response = await post(app, json=request(ADVISOR_TOOL), headers=CALLER)
    assert response.status_code == 200
    assert block_types(response.json()["content"]) == ONE_CONSULT
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    assert all("advisor_20260301" not in r.raw.decode() for r in script.requests)
