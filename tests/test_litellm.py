"""LiteLLM's own proxy app (``litellm.proxy.proxy_server:app``, configured by a ``config.yaml``)
wrapped by ``AdvisorMiddleware`` and served by uvicorn on 127.0.0.1.

The executor is ``hosted_vllm/exec-m``: LiteLLM translates each executor leg from Anthropic
Messages to Chat Completions and sends it to a scripted OpenAI-compatible server. The advisor is
another deployment: ``anthropic/adv-m`` (a scripted Anthropic-format host) or
``hosted_vllm/adv-oai-m``. Legs re-enter the proxy app (``AppRouter``) with the caller's key, so
LiteLLM's auth, per-key model access and logging callbacks see every leg. LiteLLM 1.110.2 is a
test dependency: without it these tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anthropic
import anyio
import httpx
import pytest
from anthropic.types.beta import BetaMessage

from advisor_middleware import AdvisorMiddleware, AdvisorProfile
from advisor_middleware.check import Options, run_check

from .support.helpers import ONE_CONSULT, block_types, call, wait_until
from .support.litellm_config import Deployment, write_config
from .support.openai_backend import ChatScript, openai_host
from .support.servers import uvicorn_server
from .support.upstream import Fail, Reply, Script, scripted_host, text, tool_use

if TYPE_CHECKING:
    from .support.litellm_support import Call, InterceptorSpy

pytestmark = [
    pytest.mark.anyio,
    # LiteLLM 1.110 uses Pydantic APIs deprecated since 2.0/2.11; not ours to fix.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:litellm\..*"),
]

MASTER_KEY = "sk-master-7f3a9c2e5b1d4068"
"""For LiteLLM's admin routes; with ``custom_auth`` set, that function alone decides who may call
``/v1/messages`` (LiteLLM never reaches its master-key check), so this key is refused there."""
FULL_KEY = "sk-full-caller-0001"
CHEAP_KEY = "sk-cheap-caller-0002"
PRICES = {"exec": (1e-6, 2e-6), "adv": (1e-5, 3e-5), "adv-oai": (2e-5, 4e-5)}
"""model group -> (input, output) USD per token, set in the config so LiteLLM prices each leg."""

ADVISOR_MODEL = {"adv": "adv-m", "adv-oai": "adv-oai-m"}
"""advisor model group -> the model name its backend sees."""
CHAIN = AdvisorProfile(match="adv-chain", models=("adv", "adv-oai"))
"""The middleware's one profile: the advisor ``adv-chain`` is the ``adv`` deployment, falling back
to ``adv-oai``. Every other advisor model is consulted as requested."""


@dataclass
class Proxy:
    url: str
    chat: ChatScript
    anthropic_host: Script

    def reset(self) -> None:
        from .support.litellm_support import recorder

        self.chat.turns.clear()
        self.chat.requests.clear()
        self.anthropic_host.turns.clear()
        self.anthropic_host.requests.clear()
        self.anthropic_host.cache = None
        self.anthropic_host.billed.clear()
        recorder.calls.clear()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxy]:
    chat, script = ChatScript(), Script()
    async with uvicorn_server(openai_host(chat)) as openai_url, uvicorn_server(scripted_host(script)) as anthropic_url:
        deployments = {
            "exec": Deployment("hosted_vllm/exec-m", openai_url + "/v1", "backend-key-exec", PRICES["exec"]),
            "adv": Deployment("anthropic/adv-m", anthropic_url, "backend-key-adv", PRICES["adv"]),
            "adv-oai": Deployment(
                "hosted_vllm/adv-oai-m", openai_url + "/v1", "backend-key-adv-oai", PRICES["adv-oai"]
            ),
        }
        config = write_config(
            tmp_path_factory.mktemp("litellm") / "config.yaml",
            deployments,
            master_key=MASTER_KEY,
            # Per-key model lists without a database: see tests/support/litellm_support.py.
            litellm_settings={"enable_post_custom_auth_checks": True},
            general_settings={
                "custom_auth": "tests.support.litellm_support.auth",
                "custom_auth_run_common_checks": True,
            },
        )
        with pytest.MonkeyPatch.context() as env:
            env.setenv("CONFIG_FILE_PATH", str(config))
            from litellm.proxy.proxy_server import app

            async with uvicorn_server(AdvisorMiddleware(app, advisor_profiles=(CHAIN,))) as url:
                yield Proxy(url, chat, script)


@pytest.fixture
def interceptor(monkeypatch: pytest.MonkeyPatch) -> InterceptorSpy:
    from .support.litellm_support import spy_on_interceptor

    return spy_on_interceptor(monkeypatch)


@pytest.fixture
def proxy(litellm_proxy: Proxy) -> Proxy:
    litellm_proxy.reset()
    return litellm_proxy


def sdk(proxy: Proxy, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=proxy.url, max_retries=0, timeout=20.0)


def request(advisor: str = "adv", **overrides: Any) -> dict[str, Any]:
    return {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Plan the migration."}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": advisor}],
        **overrides,
    }


def script_consult(proxy: Proxy, advisor: str, advice: str = "Migrate in two steps.") -> None:
    proxy.chat.model(
        "exec-m",
        Reply([text("Let me ask the advisor."), tool_use("advisor", id="call_adv_1")], stop_reason="tool_use"),
        Reply([text("Done, in two steps.")], input_tokens=40, output_tokens=9),
    )
    if advisor == "adv":
        proxy.anthropic_host.direct(Reply([text(advice)], input_tokens=300, output_tokens=20))
    else:
        proxy.chat.model(ADVISOR_MODEL[advisor], Reply([text(advice)], input_tokens=300, output_tokens=20))


async def logged(expected: int) -> list[Call]:
    """The recorder's calls once ``expected`` are in (LiteLLM logs after the response ends)."""
    from .support.litellm_support import recorder

    calls = recorder.calls
    await wait_until(lambda: len(calls) >= expected, 30.0, f"{expected} calls logged by LiteLLM")
    await asyncio.sleep(0.2)  # and nothing more arrives
    return list(calls)


@pytest.mark.parametrize("advisor", ["adv", "adv-oai"])
@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_consult_through_litellm_proxy(
    proxy: Proxy, interceptor: InterceptorSpy, streaming: bool, advisor: str
) -> None:
    script_consult(proxy, advisor)
    async with sdk(proxy, FULL_KEY) as client:
        message = await call(client, streaming, **request(advisor))

    # Native blocks and usage, as Anthropic's SDK parses them.
    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2].model_dump(exclude_none=True)
    assert result["content"] == {"type": "advisor_result", "text": "Migrate in two steps."}
    assert result["tool_use_id"] == message.content[1].model_dump()["id"]
    assert message.stop_reason == "end_turn"
    assert message.model == "exec"
    iterations = _iterations(message)
    assert [(i["type"], i.get("model")) for i in iterations] == [
        ("message", None),
        ("advisor_message", advisor),
        ("message", None),
    ]
    assert iterations[1]["input_tokens"] == 300 and iterations[1]["output_tokens"] == 20

    # The executor's backend got Chat Completions with the advisor as a plain function tool.
    legs = proxy.chat.of("exec-m")
    assert len(legs) == 2
    for leg in legs:
        assert b"advisor_20260301" not in leg.raw
        assert leg.body["tools"][-1]["type"] == "function"
        assert leg.body["tools"][-1]["function"]["name"] == "advisor"
        assert leg.headers["authorization"] == "Bearer backend-key-exec"  # the deployment's key
        assert "x-advisor-leg" not in leg.headers
    # The second executor leg answers the advisor call with the advice, as a tool message.
    answer = legs[1].body["messages"][-1]
    assert answer["role"] == "tool" and answer["tool_call_id"] == "call_adv_1"
    assert "Migrate in two steps." in str(answer["content"])

    # The advisor leg went to the other deployment, tool-less, with the deployment's own key.
    if advisor == "adv":
        (messages_leg,) = proxy.anthropic_host.requests
        assert b"advisor_20260301" not in messages_leg.raw
        assert messages_leg.body["model"] == "adv-m" and "tools" not in messages_leg.body
        assert messages_leg.headers["x-api-key"] == "backend-key-adv"
    else:
        (chat_leg,) = proxy.chat.of("adv-oai-m")
        assert b"advisor_20260301" not in chat_leg.raw and "tools" not in chat_leg.body
        assert chat_leg.headers["authorization"] == "Bearer backend-key-adv-oai"

    # LiteLLM's advisor interceptor looked at every leg and never took one over.
    assert len(interceptor.verdicts) == 3 and not any(interceptor.verdicts)
    assert interceptor.handled == []

    # LiteLLM logged every leg under the caller's key, each priced as its own model.
    calls = await logged(3)
    assert [(c.outcome, c.key_alias, c.model_group) for c in calls] == [
        ("success", "full-caller", "exec"),
        ("success", "full-caller", advisor),
        ("success", "full-caller", "exec"),
    ]
    assert {c.key_hash for c in calls} == {key_hash(FULL_KEY)}
    input_price, output_price = PRICES[advisor]
    assert calls[1].cost == pytest.approx(300 * input_price + 20 * output_price)
    assert calls[2].cost == pytest.approx(40 * PRICES["exec"][0] + 9 * PRICES["exec"][1])


def key_hash(key: str) -> str:
    """How LiteLLM identifies a key in its logs and spend records (``hash_token``)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _iterations(message: BetaMessage) -> list[dict[str, Any]]:
    usage = message.usage.model_dump()
    iterations = usage["iterations"]
    assert isinstance(iterations, list)
    return iterations


async def test_the_interceptor_spy_sees_a_raw_advisor_tool(proxy: Proxy, interceptor: InterceptorSpy) -> None:
    """Control: the spy is wired. A request the middleware passes through untouched (it carries
    the leg marker) reaches LiteLLM with ``advisor_20260301``, and LiteLLM's interceptor takes it."""
    async with httpx.AsyncClient(base_url=proxy.url, timeout=20.0) as http:
        response = await http.post(
            "/v1/messages",
            json=request(),
            headers={"x-api-key": FULL_KEY, "x-advisor-leg": "executor"},
        )
    assert response.status_code >= 500
    assert interceptor.verdicts == [True]
    assert interceptor.handled == ["hosted_vllm/exec-m"]
    assert proxy.chat.requests == []


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_key_without_the_advisor_model_gets_an_error_result(
    proxy: Proxy, interceptor: InterceptorSpy, streaming: bool
) -> None:
    script_consult(proxy, "adv")
    async with sdk(proxy, CHEAP_KEY) as client:
        message = await call(client, streaming, **request())
    assert block_types(message.content) == ONE_CONSULT
    content = message.content[2].model_dump()["content"]
    assert content["type"] == "advisor_tool_result_error"
    assert "Migrate" not in str(message.model_dump())  # never the advice
    assert proxy.anthropic_host.requests == []  # LiteLLM refused the leg before any backend call
    assert [i["type"] for i in _iterations(message)] == ["message", "message"]

    # LiteLLM logged the refused advisor leg (failure callback, and the proxy's failure hook)
    # under the caller's key, at no cost, between the two executor legs.
    calls = await logged(4)
    assert {c.key_hash for c in calls} == {key_hash(CHEAP_KEY)}
    assert sorted((c.outcome, c.model_group or c.model, c.cost) for c in calls) == [
        ("denied", "adv", None),
        ("failure", "adv", 0.0),
        ("success", "exec", pytest.approx(10 * PRICES["exec"][0] + 5 * PRICES["exec"][1])),
        ("success", "exec", pytest.approx(40 * PRICES["exec"][0] + 9 * PRICES["exec"][1])),
    ]
    assert not any(interceptor.verdicts)


@pytest.mark.parametrize("key", ["sk-unknown-0003", FULL_KEY + "x", MASTER_KEY])
async def test_bad_key_is_refused_on_the_executor_leg(proxy: Proxy, key: str) -> None:
    async with sdk(proxy, key) as client:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await call(client, False, **request())
    assert raised.value.status_code == 401
    assert proxy.chat.requests == [] and proxy.anthropic_host.requests == []


async def test_requests_without_the_advisor_pass_through(proxy: Proxy, interceptor: InterceptorSpy) -> None:
    proxy.chat.model("exec-m", Reply([text("Plain answer.")]))
    async with sdk(proxy, FULL_KEY) as client:
        message = await call(client, True, **request(tools=[]))
    assert block_types(message.content) == ["text"]
    assert message.usage.model_dump().get("iterations") is None
    (leg,) = proxy.chat.requests
    assert "tools" not in leg.body
    assert [(c.key_alias, c.model_group) for c in await logged(1)] == [("full-caller", "exec")]


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_a_profile_falls_back_to_the_next_deployment(
    proxy: Proxy, interceptor: InterceptorSpy, streaming: bool
) -> None:
    # The chain's first deployment is overloaded; the second answers. The client sees one consult.
    script_consult(proxy, "adv-oai", advice="Use the backup plan.")
    proxy.anthropic_host.direct(Fail(529, "overloaded_error", "Overloaded"))
    async with sdk(proxy, FULL_KEY) as client:
        message = await call(client, streaming, **request("adv-chain"))

    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2].model_dump(exclude_none=True)
    assert result["content"] == {"type": "advisor_result", "text": "Use the backup plan."}
    assert [(i["type"], i.get("model")) for i in _iterations(message)] == [
        ("message", None),
        ("advisor_message", "adv-oai"),
        ("message", None),
    ]
    (failed,) = proxy.anthropic_host.requests
    assert failed.body["model"] == "adv-m"
    assert len(proxy.chat.of("adv-oai-m")) == 1

    # Both attempts reached LiteLLM under the caller's key: the first failed, the second answered.
    calls = await logged(4)
    assert {c.key_hash for c in calls} == {key_hash(FULL_KEY)}
    outcomes = sorted((c.outcome, c.model_group or c.model) for c in calls if c.outcome != "denied")
    assert outcomes == [("failure", "adv"), ("success", "adv-oai"), ("success", "exec"), ("success", "exec")]
    assert not any(interceptor.verdicts)


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_an_anthropic_advisor_deployment_caches_the_advisors_prompt(proxy: Proxy, streaming: bool) -> None:
    # The tool's caching switch: the advisor legs' cache_control reaches the anthropic/
    # deployment's backend through LiteLLM, whose cache-faithful bill reaches the iterations.
    from advisor_middleware.demo_cache import PromptCache

    proxy.anthropic_host.cache = PromptCache()
    proxy.chat.model(
        "exec-m",
        Reply([text("First look."), tool_use("advisor", id="call_adv_1")], stop_reason="tool_use"),
        Reply([text("Second look."), tool_use("advisor", id="call_adv_2")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    )
    proxy.anthropic_host.direct(Reply([text("Check the schema.")]), Reply([text("Looks right.")]))
    tool = {"type": "advisor_20260301", "name": "advisor", "model": "adv", "caching": {"type": "ephemeral"}}
    body = request(system="You migrate databases with care. " * 200, tools=[tool])
    async with sdk(proxy, FULL_KEY) as client:
        message = await call(client, streaming, **body)
    legs = proxy.anthropic_host.requests
    assert len(legs) == 2
    for leg in legs:
        marked = [b for b in leg.body["messages"][0]["content"] if "cache_control" in b]
        assert [b["cache_control"] for b in marked] == [{"type": "ephemeral", "ttl": "5m"}] * 2
    first, second = proxy.anthropic_host.billed
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"] > 1024
    advisor = [i for i in _iterations(message) if i["type"] == "advisor_message"]
    for iteration, billed in zip(advisor, proxy.anthropic_host.billed, strict=True):
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            assert iteration[key] == billed[key], (key, iteration, billed)


def consulting_executor(body: dict[str, Any]) -> Reply:
    """An executor that calls the advisor once per user turn, then answers."""
    if body["messages"][-1]["role"] == "tool":
        return Reply([text("Done, as advised.")], input_tokens=40, output_tokens=9)
    return Reply([text("Let me ask the advisor."), tool_use("advisor")], stop_reason="tool_use")


async def test_check_holds_against_the_proxy(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """``advisor-middleware check`` finds every rule held by LiteLLM's proxy behind the middleware."""
    monkeypatch.setitem(proxy.chat.responders, "exec-m", consulting_executor)
    monkeypatch.setitem(proxy.chat.responders, "adv-oai-m", lambda body: Reply([text("Keep it small.")]))
    options = Options(proxy.url, key=FULL_KEY, model="exec", advisor="adv-oai", timeout=60.0)
    report = await anyio.to_thread.run_sync(run_check, options)
    assert report.ok, report.text()
    assert len(report.results) == 23
    assert [(leg.kind, leg.model) for leg in report.timeline] == [
        ("executor", "exec"),
        ("advisor", "adv-oai"),
        ("executor", "exec"),
    ]
    assert len(proxy.chat.of("exec-m")) == 6  # two executor legs for each of the three requests
