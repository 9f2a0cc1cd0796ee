"""Property tests: ``render_history`` on random conversations a client could send back.

The histories mix user text, thinking (with signatures), client tool calls and their results,
consults (call and result, in one message or in the next one after a pause), every result shape,
orphaned results, dangling calls and ``role: "system"`` messages adding or removing the advisor.
Whatever the mix, the executor gets no native advisor block, every block the client wrote (but the
advisor's), a well-formed pairing of advisor calls and results, and the same output again when
the output is rendered a second time.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from advisor_middleware.history import render_history

from .support.helpers import (
    REDACTED,
    SECRET,
    advisor_pair,
    assistant,
    expected_blocks,
    rendered_blocks,
    result,
    srv,
    strip_cache_control,
    system,
    tool_result,
    user,
)
from .support.upstream import text, thinking, tool_use

settings.register_profile(
    "history-properties",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("history-properties")

NATIVE = {"server_tool_use", "advisor_tool_result", "tool_addition", "tool_removal"}
CACHE = {"type": "ephemeral"}

Draw = Callable[[st.SearchStrategy[Any]], Any]


# --- strategies ----------------------------------------------------------------------------------------


def result_content(draw: Draw, tag: str) -> Any:
    """One advisor result in any shape a client sends back: object, list or string; any kind."""
    kind = draw(st.sampled_from(["advisor_result", "advisor_redacted_result", "advisor_tool_result_error"]))
    inner: dict[str, Any]
    if kind == "advisor_result":
        inner = {"type": kind, "text": f"advice {tag}"}
        if draw(st.booleans()):
            inner["stop_reason"] = draw(st.sampled_from(["end_turn", "max_tokens"]))
    elif kind == "advisor_redacted_result":
        inner = REDACTED
    else:
        inner = {"type": kind, "error_code": draw(st.sampled_from(["overloaded", "prompt_too_long", "unavailable"]))}
    shape = draw(st.sampled_from(["object", "list", "string"] if kind == "advisor_result" else ["object", "list"]))
    return {"object": inner, "list": [inner], "string": inner["text"] if "text" in inner else inner}[shape]


def maybe_cached(draw: Draw, block: dict[str, Any]) -> dict[str, Any]:
    return {**block, "cache_control": CACHE} if draw(st.booleans()) else block


@st.composite
def histories(draw: Draw) -> list[Any]:
    counter = itertools.count()

    def tag() -> str:
        return str(next(counter))

    messages: list[Any] = []
    late: list[tuple[str, Any]] = []  # consults whose result comes in the next assistant message
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["user", "user", "assistant", "assistant", "assistant", "system"]))
        if kind == "user":
            if draw(st.booleans()):
                messages.append(user(f"user says {tag()}"))
            else:
                messages.append(user([maybe_cached(draw, text(f"user says {tag()}"))]))
        elif kind == "system":
            if draw(st.integers(0, 4)) == 0:
                messages.append(system(f"reminder {tag()}"))
            else:
                ref = {
                    "type": draw(st.sampled_from(["tool_addition", "tool_removal"])),
                    "tool": {"type": "tool_reference", "name": "advisor"},
                }
                messages.append(system([text(f"reminder {tag()}"), maybe_cached(draw, ref)]))
        else:
            content: list[Any] = [result(srv_id, answer) for srv_id, answer in late]
            late = []
            calls: list[str] = []
            for _ in range(draw(st.integers(1, 5))):
                part = draw(
                    st.sampled_from(["text", "thinking", "consult", "late", "dangling", "orphan", "tool", "odd"])
                )
                n = tag()
                if part == "text":
                    content.append(text(f"assistant says {n}"))
                elif part == "thinking":
                    content.append(thinking(f"thought {n}", f"sig-{n}"))
                elif part == "consult":
                    content += [srv(f"srvtoolu_toolu__{n}"), result(f"srvtoolu_toolu__{n}", result_content(draw, n))]
                elif part == "late":
                    content.append(srv(f"srvtoolu_toolu__{n}"))
                    late.append((f"srvtoolu_toolu__{n}", result_content(draw, n)))
                elif part == "dangling":
                    content.append(srv(f"srvtoolu_toolu__{n}"))
                elif part == "orphan":
                    content.append(result(f"srvtoolu_gone{n}", result_content(draw, n)))
                elif part == "odd":
                    # What no well-behaved client sends: a result before its call, an id used twice.
                    srv_id = f"srvtoolu_toolu__{draw(st.integers(0, int(n)))}"
                    pair = [srv(srv_id), result(srv_id, result_content(draw, n))]
                    content += draw(st.permutations(pair))
                else:
                    content.append(tool_use("Bash", {"command": f"echo {n}"}, id=f"toolu_client{n}"))
                    calls.append(f"toolu_client{n}")
            messages.append(assistant(content))
            if calls:
                messages.append(user([tool_result(call, f"output of {call}") for call in calls]))
    return messages


# --- what every rendering must satisfy ------------------------------------------------------------------


def blocks_of(messages: list[Any]) -> Iterator[dict[str, Any]]:
    for message in messages:
        if isinstance(message["content"], list):
            yield from message["content"]


def advisor_ids(messages: list[Any]) -> set[str]:
    return {b["id"] for b in blocks_of(messages) if b["type"] == "tool_use" and b["name"] == "advisor"}


# Shapes the search has found before, kept as fixed examples.
CALL_THEN_CONSULT_AT_THE_END = [
    user("q"),
    assistant([srv("srvtoolu_toolu__1"), *advisor_pair("srvtoolu_toolu__2", "advice"), text("more")]),
]
RESULT_AFTER_ANOTHER_CONSULT = [
    user("q"),
    assistant([srv("srvtoolu_toolu__1"), *advisor_pair("srvtoolu_toolu__2", "two"), text("between")]),
    assistant([result("srvtoolu_toolu__1", "one"), text("after")]),
]
ONE_ID_TWICE = [
    user("q"),
    assistant([*advisor_pair("srvtoolu_toolu__1", "advice"), srv("srvtoolu_toolu__1")]),
    user([tool_result("toolu_client", "out")]),
]


@settings(PROFILE)
@given(histories())
@example(CALL_THEN_CONSULT_AT_THE_END)
@example(RESULT_AFTER_ANOTHER_CONSULT)
@example(ONE_ID_TWICE)
def test_rendering_is_clean_complete_paired_and_idempotent(messages: list[Any]) -> None:
    original = copy.deepcopy(messages)
    rendered, info = render_history(messages)
    assert messages == original  # the input is not modified

    # Nothing native reaches the executor, and never the encrypted blob.
    assert all(m["role"] in ("user", "assistant") for m in rendered)
    assert not {b["type"] for b in blocks_of(rendered)} & NATIVE
    wire = json.dumps(rendered)
    assert SECRET not in wire
    assert "encrypted_content" not in wire

    # Every block the client wrote, but the advisor's, is there, in order.
    assert strip_cache_control(rendered_blocks(rendered)) == strip_cache_control(expected_blocks(messages))

    # The executor's turns are never split in two.
    assert all(not (a["role"] == b["role"] == "assistant") for a, b in itertools.pairwise(rendered))

    # Every advisor call is answered in the very next message, but the pending ones (resumed).
    pending = {exec_id for exec_id, _ in info.pending}
    for i, message in enumerate(rendered):
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block["type"] != "tool_use" or block["name"] != "advisor":
                continue
            if block["id"] in pending:
                assert i == max(j for j, m in enumerate(rendered) if m["role"] == "assistant")
                continue
            following = rendered[i + 1]["content"] if i + 1 < len(rendered) else []
            answers = [b for b in following if isinstance(b, dict) and b.get("tool_use_id") == block["id"]]
            assert len(answers) == 1, (block["id"], rendered)
            assert answers[0]["type"] == "tool_result"
    assert pending <= advisor_ids(rendered)
    # Every advisor result is placed once: as its call's tool_result, or as text if its call is gone.
    results = [b for b in blocks_of(messages) if b["type"] == "advisor_tool_result"]
    placed = [
        b for b in blocks_of(rendered) if b["type"] == "tool_result" and b["tool_use_id"] in advisor_ids(rendered)
    ]
    kept = [
        b for b in blocks_of(rendered) if b["type"] == "text" and b["text"].startswith("[Earlier advisor response]")
    ]
    assert len(results) == len(placed) + len(kept)
    # Ids stay unique: the API rejects a tool_use id, or a tool_result for one, seen twice.
    uses = [b["id"] for b in blocks_of(rendered) if b["type"] == "tool_use"]
    answered = [b["tool_use_id"] for b in blocks_of(rendered) if b["type"] == "tool_result"]
    assert len(uses) == len(set(uses))
    assert len(answered) == len(set(answered))

    # Rendering what was rendered changes nothing.
    again, _ = render_history(rendered)
    assert again == rendered


# --- the shortcut for histories with nothing to render -------------------------------------------


@st.composite
def near_plain_histories(draw: Draw) -> list[Any]:
    """Conversations that are mostly what Claude Code sends (alternating turns of text, thinking,
    client tools and results) with, now and then, what makes a history need rendering: two turns
    of one role in a row, an empty or odd content, an extra key, a system turn, an advisor block."""
    blocks = st.sampled_from(
        [
            text("words"),
            thinking("thought", "sig-1"),
            tool_use("Bash", {"command": "ls"}, id="toolu_c1"),
            tool_result("toolu_c1", "output"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        ]
    )
    odd = st.sampled_from(
        [
            srv("srvtoolu_toolu__1"),
            result("srvtoolu_toolu__1", "advice"),
            {"type": "tool_addition", "tool": {"type": "tool_reference", "name": "advisor"}},
            "a bare string block",
        ]
    )
    messages: list[Any] = []
    role = draw(st.sampled_from(["user", "assistant"]))
    for _ in range(draw(st.integers(0, 8))):
        content: Any = draw(st.one_of(st.text(min_size=1, max_size=5), st.lists(blocks, min_size=1, max_size=3)))
        twist = draw(st.integers(0, 40))
        if twist == 0:
            content = [*content, draw(odd)] if isinstance(content, list) else [draw(odd)]
        message: dict[str, Any] = {"role": role, "content": content}
        if twist == 1:
            message["id"] = "msg_1"
        elif twist == 2:
            message["role"] = "system"
        elif twist == 3:
            message["content"] = draw(st.sampled_from([None, "", [], {"type": "text", "text": "not a list"}]))
        messages.append(message)
        if twist != 4:  # else the same role again
            role = "assistant" if role == "user" else "user"
    return messages


@settings(PROFILE)
@given(near_plain_histories())
@example([user("q"), assistant([text("a"), tool_use("Bash", {}, id="toolu_1")]), user([tool_result("toolu_1", "")])])
@example([user("q"), user("q again")])
def test_the_shortcut_gives_what_rendering_gives(messages: list[Any]) -> None:
    from advisor_middleware.history import _plain, _render

    for resume in (True, False):
        assert render_history(messages, resume=resume) == _render(messages, resume)
    if _plain(messages):
        assert render_history(messages)[0] == messages
