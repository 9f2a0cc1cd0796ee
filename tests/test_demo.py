"""The demo gateway answers bad input the way the middleware does: a 4xx in Anthropic's error
shape, never a 500. Through the app ``advisor-middleware serve`` runs (``build_app``), the demo
model unpaced."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor_middleware.cli import build_app

from .support.helpers import check_stream, post
from .support.upstream import ADVISOR_TOOL

pytestmark = pytest.mark.anyio

APP = build_app(None, demo_delay=0)
GOOD: dict[str, Any] = {
    "model": "demo-executor",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan the migration."}],
}


def assert_answered(response: Any, body: Any) -> None:
    """A well-formed answer: 200 (a Message, or a stream the SDK accepts) or a 4xx error."""
    where = f"{json.dumps(body)[:300]} -> {response.status_code} {response.text[:300]}"
    assert response.status_code == 200 or 400 <= response.status_code < 500, where
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/json", where
        error = response.json()
        assert set(error) == {"type", "error"} and error["type"] == "error", where
        assert error["error"]["type"] == "invalid_request_error", where
        assert isinstance(error["error"]["message"], str) and error["error"]["message"], where
    elif response.headers["content-type"].startswith("text/event-stream"):
        _, message = check_stream(response.content)
        assert message is not None, where
    else:
        assert response.json()["type"] == "message", where


@pytest.mark.parametrize("advisor", [False, True], ids=["plain", "advisor"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", 5),
        ("tools", True),
        ("tools", -1.5),
        ("tools", "Bash"),
        ("tools", [5]),
        ("messages", {"role": "user"}),
        ("messages", [5]),
        ("messages", [{"role": "user", "content": 5}]),
        ("messages", [{"role": 5, "content": "hi"}]),
        ("messages", [{"role": "user", "content": [5]}]),
        ("system", 5),
        ("system", [5]),
        ("stream", "yes"),
        ("model", 5),
        ("model", ""),
    ],
)
async def test_malformed_fields_are_a_400(field: str, value: Any, advisor: bool) -> None:
    body = {**GOOD, field: value}
    if advisor and field != "tools":
        body["tools"] = [ADVISOR_TOOL]
    response = await post(APP, json.dumps(body).encode(), {"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert_answered(response, body)
    assert field in response.json()["error"]["message"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
BLOCKS = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "image"])},
    optional={"text": JSON_VALUES, "content": JSON_VALUES, "id": JSON_VALUES, "tool_use_id": JSON_VALUES},
)
MESSAGES = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]) | JSON_VALUES,
        "content": st.text(max_size=8) | st.lists(BLOCKS | JSON_VALUES, max_size=3) | JSON_VALUES,
    }
)
TOOLS = st.sampled_from([ADVISOR_TOOL, {"name": "Bash", "input_schema": {"type": "object"}}]) | JSON_VALUES
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("demo-executor") | JSON_VALUES,
        "messages": st.lists(MESSAGES, max_size=3) | JSON_VALUES,
        "tools": st.lists(TOOLS, max_size=3) | JSON_VALUES,
        "system": st.text(max_size=8) | st.lists(BLOCKS, max_size=2) | JSON_VALUES,
        "stream": st.booleans() | JSON_VALUES,
        "max_tokens": st.just(1024) | JSON_VALUES,
    },
)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=REQUESTS | JSON_VALUES)
async def test_any_json_body_is_answered_never_a_500(body: Any) -> None:
    response = await post(APP, json.dumps(body).encode(), {"content-type": "application/json"})
    assert_answered(response, body)
