"""Bad requests get a 4xx in Anthropic's error shape, and never reach the host."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import anthropic
import anyio
import httpx
import pytest
from starlette.applications import Starlette

from .support import helpers
from .support.helpers import ONE_CONSULT, block_types, consult
from .support.upstream import ADVISOR_TOOL, Reply, Script, text

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
CLOCK = {"name": "clock", "description": "The time.", "input_schema": {"type": "object", "properties": {}}}


def body_with(tool: Any = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [CLOCK, ADVISOR_TOOL if tool is None else tool],
    }
    body.update(overrides)
    return body


def invalid(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


async def post(app: Starlette, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A JSON POST of exactly ``content``."""
    return await helpers.post(app, content, {"content-type": "application/json", **(headers or {})})


INVALID_TOOLS = [
    pytest.param({"type": "advisor_20260301", "name": "advisor"}, "tools.1.model: Field required", id="no-model"),
    pytest.param({**ADVISOR_TOOL, "model": 123}, "tools.1.model: Input should be a valid string", id="int-model"),
    pytest.param({**ADVISOR_TOOL, "model": None}, "tools.1.model: Input should be a valid string", id="null-model"),
    pytest.param(
        {**ADVISOR_TOOL, "model": ""}, "tools.1.model: String should have at least 1 character", id="empty-model"
    ),
    pytest.param({**ADVISOR_TOOL, "max_tokens": 1000}, "tools.1.max_tokens: must be at least 1024", id="mt-1000"),
    pytest.param({**ADVISOR_TOOL, "max_tokens": 0}, "tools.1.max_tokens: must be at least 1024", id="mt-0"),
    pytest.param(
        {**ADVISOR_TOOL, "max_tokens": "2048"}, "tools.1.max_tokens: Input should be a valid integer", id="mt-str"
    ),
    pytest.param({**ADVISOR_TOOL, "name": "other"}, "tools.1.name: Input should be 'advisor'", id="name"),
    pytest.param({"type": "advisor_20260301", "model": "adv-model"}, "tools.1.name: Field required", id="no-name"),
    pytest.param(
        {**ADVISOR_TOOL, "max_uses": 0},
        "tools.1.max_uses: Input should be greater than or equal to 1",
        id="max-uses-0",
    ),
    pytest.param(
        {**ADVISOR_TOOL, "max_uses": -1},
        "tools.1.max_uses: Input should be greater than or equal to 1",
        id="max-uses-negative",
    ),
    pytest.param(
        {**ADVISOR_TOOL, "max_uses": "3"}, "tools.1.max_uses: Input should be a valid integer", id="max-uses-str"
    ),
    pytest.param(
        {**ADVISOR_TOOL, "max_uses": True}, "tools.1.max_uses: Input should be a valid integer", id="max-uses-bool"
    ),
    pytest.param(
        {**ADVISOR_TOOL, "max_uses": 1.5}, "tools.1.max_uses: Input should be a valid integer", id="max-uses-float"
    ),
    pytest.param(
        {**ADVISOR_TOOL, "defer_loading": "yes"},
        "tools.1.defer_loading: Input should be a valid boolean",
        id="defer-loading",
    ),
    pytest.param(
        {"type": "advisor_20260301", "name": "advisor", "max_uses": 0},
        "tools.1.model: Field required; tools.1.max_uses: Input should be greater than or equal to 1",
        id="two-errors",
    ),
]


@pytest.mark.parametrize(("tool", "message"), INVALID_TOOLS)
async def test_invalid_advisor_tool(make_app: MakeApp, script: Script, tool: dict[str, Any], message: str) -> None:
    response = await post(make_app(), json.dumps(body_with(tool)).encode())
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == invalid(message)
    assert script.requests == []


@pytest.mark.parametrize("index", [0, 2])
async def test_the_index_names_the_entry(make_app: MakeApp, script: Script, index: int) -> None:
    tools: list[Any] = [CLOCK, CLOCK]
    tools.insert(index, {"type": "advisor_20260301", "name": "advisor"})
    response = await post(make_app(), json.dumps(body_with(tools=tools)).encode())
    assert response.status_code == 400
    assert response.json() == invalid(f"tools.{index}.model: Field required")
    assert script.requests == []


async def test_max_tokens_message_names_the_field_and_the_minimum(make_app: MakeApp, script: Script) -> None:
    response = await post(make_app(), json.dumps(body_with({**ADVISOR_TOOL, "max_tokens": 1000})).encode())
    message = response.json()["error"]["message"]
    assert "tools.1.max_tokens" in message
    assert "1024" in message


async def test_two_advisor_tools(make_app: MakeApp, script: Script) -> None:
    tools = [ADVISOR_TOOL, CLOCK, {**ADVISOR_TOOL, "model": "other-model"}]
    response = await post(make_app(), json.dumps(body_with(tools=tools)).encode())
    assert response.status_code == 400
    assert response.json() == invalid("tools.2: only one advisor_20260301 tool may be given")
    assert script.requests == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"messages": "hi"}, "messages: Input should be a valid list", id="messages-str"),
        pytest.param({"messages": {"role": "user"}}, "messages: Input should be a valid list", id="messages-dict"),
        pytest.param({"messages": None}, "messages: Input should be a valid list", id="messages-null"),
        pytest.param({"model": None}, "model: Field required", id="model-null"),
        pytest.param({"model": 7}, "model: Field required", id="model-int"),
        pytest.param({"stream": "yes"}, "stream: Input should be a valid boolean", id="stream-str"),
    ],
)
async def test_invalid_top_level_fields(
    make_app: MakeApp, script: Script, overrides: dict[str, Any], message: str
) -> None:
    response = await post(make_app(), json.dumps(body_with(**overrides)).encode())
    assert response.status_code == 400
    assert response.json() == invalid(message)
    assert script.requests == []


async def test_missing_messages_and_model(make_app: MakeApp, script: Script) -> None:
    app = make_app()
    no_messages = body_with()
    del no_messages["messages"]
    response = await post(app, json.dumps(no_messages).encode())
    assert response.status_code == 400
    assert response.json() == invalid("messages: Input should be a valid list")
    no_model = body_with()
    del no_model["model"]
    response = await post(app, json.dumps(no_model).encode())
    assert response.status_code == 400
    assert response.json() == invalid("model: Field required")
    assert script.requests == []


async def test_the_sdk_sees_a_bad_request_error(client: anthropic.AsyncAnthropic, script: Script) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.with_options(max_retries=0).beta.messages.create(
            model="exec",
            max_tokens=1024,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{**ADVISOR_TOOL, "max_tokens": 1000}],  # type: ignore[list-item]
        )
    assert info.value.status_code == 400
    assert info.value.body == invalid("tools.0.max_tokens: must be at least 1024")
    assert script.requests == []


# --- body size --------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid advisor request body of exactly ``size`` bytes."""
    raw = json.dumps(body_with(system="")).encode()
    return json.dumps(body_with(system="x" * (size - len(raw)))).encode()


async def test_body_over_the_limit_with_content_length(make_app: MakeApp, script: Script) -> None:
    app = make_app(max_body_bytes=1000)
    response = await post(app, padded(1001))
    assert response.status_code == 413
    assert response.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "request body exceeds the 1000 byte limit"},
    }
    assert script.requests == []


async def test_body_at_the_limit_is_accepted(make_app: MakeApp, script: Script) -> None:
    consult(script)
    body = padded(1000)
    assert len(body) == 1000
    response = await post(make_app(max_body_bytes=1000), body)
    assert response.status_code == 200
    assert block_types(response.json()["content"]) == ONE_CONSULT


async def test_plain_body_over_the_limit_is_refused_too(make_app: MakeApp, script: Script) -> None:
    body = {"model": "exec", "max_tokens": 5, "messages": [{"role": "user", "content": "y" * 2000}]}
    response = await post(make_app(max_body_bytes=1000), json.dumps(body).encode())
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert script.requests == []


class Driver:
    """Calls an ASGI app directly with a hand-written ``receive`` (no content-length)."""

    def __init__(self, chunks: list[bytes], *, disconnect_after_chunks: bool = False) -> None:
        self.chunks = list(chunks)
        self.disconnect_after_chunks = disconnect_after_chunks
        self.sent: list[dict[str, Any]] = []
        self.done = anyio.Event()
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            self.reads += 1
            chunk = self.chunks.pop(0)
            more = bool(self.chunks) or self.disconnect_after_chunks
            return {"type": "http.request", "body": chunk, "more_body": more}
        if self.disconnect_after_chunks:
            return {"type": "http.disconnect"}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done.set()

    async def run(self, app: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        scope = helpers.http_scope([(b"host", b"testserver"), (b"content-type", b"application/json"), *(headers or [])])
        with anyio.fail_after(30):
            await app(scope, self.receive, self.send)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_chunked_body_over_the_limit(make_app: MakeApp, script: Script) -> None:
    driver = Driver(split(padded(3000), 400))
    await driver.run(make_app(max_body_bytes=1000))
    assert driver.status == 413
    assert json.loads(driver.body) == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "request body exceeds the 1000 byte limit"},
    }
    # Reading stopped at the chunk that crossed the limit.
    assert driver.reads == 3
    assert script.requests == []


async def test_chunked_body_under_the_limit_is_reassembled(make_app: MakeApp, script: Script) -> None:
    consult(script)
    body = padded(2000)
    driver = Driver([b"", *split(body, 300)])
    await driver.run(make_app(max_body_bytes=2000))
    assert driver.status == 200
    message = json.loads(driver.body)
    assert block_types(message["content"]) == ONE_CONSULT
    assert script.of("executor")[0].body["system"] == json.loads(body)["system"]


async def test_client_gone_while_sending_the_body(make_app: MakeApp, script: Script) -> None:
    # Two chunks that both promise more, then the client is gone.
    driver = Driver(split(padded(2000), 500)[:2], disconnect_after_chunks=True)
    await driver.run(make_app())
    assert driver.reads == 2
    assert driver.sent == []
    assert script.requests == []


async def test_invalid_content_length(make_app: MakeApp, script: Script) -> None:
    driver = Driver([json.dumps(body_with()).encode()])
    await driver.run(make_app(), headers=[(b"content-length", b"abc")])
    assert driver.status == 400
    assert json.loads(driver.body) == invalid("invalid content-length header")
    assert script.requests == []


# --- content-encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
async def test_unsupported_content_encoding(make_app: MakeApp, script: Script, encoding: str) -> None:
    response = await post(make_app(), json.dumps(body_with()).encode(), {"content-encoding": encoding})
    assert response.status_code == 415
    assert response.json() == invalid(f"unsupported content-encoding {encoding!r}")
    assert script.requests == []


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("GZIP", gzip.compress), ("deflate", zlib.compress), ("identity", lambda b: b)],
)
async def test_encoded_body_with_the_advisor_is_handled(
    make_app: MakeApp, script: Script, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    consult(script)
    plain = json.dumps(body_with(system="Be terse.")).encode()
    response = await post(make_app(), compress(plain), {"content-encoding": encoding})
    assert response.status_code == 200
    message = response.json()
    assert block_types(message["content"]) == ONE_CONSULT
    assert message["content"][2]["content"] == {"type": "advisor_result", "text": "Advice."}
    first = script.of("executor")[0]
    assert "content-encoding" not in first.headers
    assert first.body["system"] == "Be terse."
    assert first.body["messages"] == [{"role": "user", "content": "hi"}]
    assert len(script.of("advisor")) == 1


async def test_invalid_gzip_data(make_app: MakeApp, script: Script) -> None:
    response = await post(make_app(), b"definitely not gzip", {"content-encoding": "gzip"})
    assert response.status_code == 400
    assert response.json() == invalid("request body is not valid gzip data")
    assert script.requests == []


async def test_gzip_bomb_is_refused(make_app: MakeApp, script: Script) -> None:
    compressed = gzip.compress(padded(50_000))
    assert len(compressed) < 1000
    response = await post(make_app(max_body_bytes=1000), compressed, {"content-encoding": "gzip"})
    assert response.status_code == 413
    assert response.json()["error"] == {
        "type": "request_too_large",
        "message": "request body exceeds the 1000 byte limit",
    }
    assert script.requests == []


UNREADABLE_SECRET = "UNREADABLE-5b1e-do-not-echo"
LONE_SURROGATE = '"' + UNREADABLE_SECRET + ' \\ud83d"'  # half of an emoji, as a cut JS string writes it


def nested(depth: int) -> str:
    return "[" * depth + json.dumps(UNREADABLE_SECRET) + "]" * depth


UNREADABLE = {
    # The advisor tool, with a string we cannot read elsewhere in the body.
    "tool-lone-surrogate": lambda: json.dumps(body_with()).replace('"hi"', LONE_SURROGATE),
    "tool-in-metadata": lambda: json.dumps(body_with(metadata={"user_id": "u"})).replace('"u"', LONE_SURROGATE),
    "tool-deep-nesting": lambda: json.dumps(body_with(metadata={"x": "N"})).replace('"N"', nested(300)),
    # Advisor blocks in history, no tool on this turn.
    "history-lone-surrogate": lambda: json.dumps(
        {
            "model": "exec",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": helpers.advisor_pair("srvtoolu_x", helpers.advice("Advice."))},
                {"role": "user", "content": "more"},
            ],
        }
    ).replace('"more"', LONE_SURROGATE),
}


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize("case", list(UNREADABLE))
async def test_a_body_that_mentions_the_advisor_and_cannot_be_read_is_a_400(
    make_app: MakeApp, script: Script, case: str, encoding: str
) -> None:
    # Replayed, a host with a laxer parser (Python's json takes lone surrogates) would see a raw
    # advisor_20260301 tool or advisor blocks it cannot handle: we answer, saying why, not what.
    raw = UNREADABLE[case]().encode()
    json.loads(raw)  # Python's own parser reads it: a host may well have
    response = await post(make_app(), gzip.compress(raw) if encoding == "gzip" else raw, {"content-encoding": encoding})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("request body is not JSON the advisor middleware can read:")
    assert "line 1 column" in error["message"]
    assert UNREADABLE_SECRET not in response.text
    assert script.requests == []


async def test_a_body_that_does_not_mention_the_advisor_is_replayed_unread(make_app: MakeApp, script: Script) -> None:
    # No advisor in it: the host judges the bytes as it would without us.
    script.direct(Reply([text("ok")]))
    raw = json.dumps({"model": "exec", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    raw = raw.replace('"hi"', LONE_SURROGATE)
    response = await post(make_app(), raw.encode())
    assert response.status_code == 200
    assert script.requests[0].raw == raw.encode()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def test_the_middlewares_options_are_the_fields_of_advisor_config() -> None:
    # AdvisorConfig declares the options and their defaults; AdvisorOptions only names them for
    # type checkers, and must name the same ones.
    from advisor_middleware import AdvisorMiddleware
    from advisor_middleware.config import AdvisorConfig, AdvisorOptions

    assert set(AdvisorOptions.__annotations__) == set(AdvisorConfig.model_fields)
    middleware = AdvisorMiddleware(_no_app, max_consults=3, paths=["/x/"])
    assert middleware.config.max_consults == 3
    assert middleware.config.ping_interval == AdvisorConfig.model_fields["ping_interval"].default
    with pytest.raises(ValueError, match="max_consult"):
        AdvisorMiddleware(_no_app, max_consult=3)  # type: ignore[call-arg]


def test_each_error_type_and_its_status_map_to_each_other() -> None:
    # One table: the status an error event's type implies reads back as the same type.
    from advisor_middleware.errors import ERROR_TYPES, error_type_for_status, status_for_error_type

    for error_type in ERROR_TYPES:
        assert error_type_for_status(status_for_error_type(error_type)) == error_type
    assert (status_for_error_type("timeout_error"), status_for_error_type("api_error")) == (504, 500)
    assert status_for_error_type("not_an_anthropic_type") == 500
