"""``srvtoolu_`` ids in a client's history that the middleware could not have minted.

The client sees ``srvtoolu_`` + the executor's id escaped; history decodes it back. An id whose
escapes decode to no character (past U+10FFFF), to half of one (a surrogate), or that spells a
character another way than ours is not one of ours: it reaches the executor as it is, with and
without the advisor tool on the turn, streamed or not, and a pending call included.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.blocks import executor_id, server_tool_use_id

from .support.helpers import advice, advisor_pair, answer_content, assistant, check_stream, post, user
from .support.upstream import ADVISOR_TOOL, Reply, Script, scripted_host, text

pytestmark = pytest.mark.anyio

NOT_OURS = [
    "srvtoolu__Uffffff",  # past U+10FFFF
    "srvtoolu__U110000",
    "srvtoolu__Ud83d00",
    "srvtoolu__ud800",  # a lone surrogate
    "srvtoolu_a_Udfff00",
    "srvtoolu__x41",  # "A", which we never escape
    "srvtoolu__u00e9",  # "é", which we escape as _xe9
]


def history(srv_id: str) -> list[Any]:
    return [
        user("Plan it."),
        assistant([text("Asking."), *advisor_pair(srv_id, advice("Advice."))]),
        user("And now?"),
    ]


def executor_ids(script: Script, role: str) -> list[str]:
    """The ids of the advisor calls and results the host got on its first ``role`` request."""
    ids = []
    for message in script.of(role)[0].body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_use":
                ids.append(block["id"])
            elif block.get("type") == "tool_result":
                ids.append(block["tool_use_id"])
    return ids


@pytest.mark.parametrize("srv_id", NOT_OURS)
@pytest.mark.parametrize("mode", ["tool-stream", "tool-json", "no-tool"])
async def test_an_id_we_could_not_have_minted_is_used_as_it_is(script: Script, srv_id: str, mode: str) -> None:
    body: dict[str, Any] = {"model": "exec", "max_tokens": 1024, "messages": history(srv_id)}
    if mode == "no-tool":
        script.direct(Reply([text("Fine.")]))
        role = "direct"
    else:
        script.executor(Reply([text("Fine.")]))
        body.update(tools=[ADVISOR_TOOL], stream=mode == "tool-stream")
        role = "executor"

    response = await post(AdvisorMiddleware(scripted_host(script)), json=body)

    assert response.status_code == 200, response.text
    if mode == "tool-stream":
        _, message = check_stream(response.content)
        assert message is not None
    assert executor_ids(script, role) == [srv_id, srv_id]
    assert json.loads(script.of(role)[0].raw)  # the leg's bytes are JSON a strict parser reads


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("srv_id", ["srvtoolu__Uffffff", "srvtoolu__ud800"])
async def test_a_pending_call_with_an_id_we_could_not_have_minted(script: Script, srv_id: str, streaming: bool) -> None:
    # A paused turn: the call has no result yet, so the consult runs first and the executor
    # gets the advice under the id as it is.
    script.advisor(Reply([text("Advice.")])).executor(Reply([text("Fine.")]))
    messages = [
        user("Plan it."),
        assistant([text("Asking."), {"type": "server_tool_use", "id": srv_id, "name": "advisor", "input": {}}]),
    ]
    body = {"model": "exec", "max_tokens": 1024, "messages": messages, "tools": [ADVISOR_TOOL], "stream": streaming}

    response = await post(AdvisorMiddleware(scripted_host(script)), json=body)

    assert response.status_code == 200, response.text
    content = answer_content(response, streaming)
    assert content[0]["type"] == "advisor_tool_result" and content[0]["tool_use_id"] == srv_id
    assert executor_ids(script, "executor") == [srv_id, srv_id]


@pytest.mark.parametrize("exec_id", ["toolu_01A", "call_0", "a__b", "x.y-z", "caf\u00e9", "\U0001f600", "_", "A_x41"])
def test_ids_we_mint_decode_to_the_executors_id(exec_id: str) -> None:
    assert executor_id(server_tool_use_id(exec_id)) == exec_id
