"""What the advisor reads: the executor's transcript, rendered append-only and within budget.

Each consult's advisor leg carries one user message, the transcript. It grows by one
appended segment per consult, within a request and across turns, so the advisor host's prefix
cache keeps hitting; it never carries what cannot be forwarded; over the operator's budget it is
shrunk, and only when even that fails does the consult end as ``prompt_too_long``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from starlette.applications import Starlette

from advisor_middleware.history import REDACTED_PLACEHOLDER

from .support.helpers import (
    ONE_CONSULT,
    SECRET,
    advice,
    advisor_pair,
    assistant,
    block_types,
    call,
    consult,
    post,
    request_body,
    result,
    srv,
    tool_result,
    user,
)
from .support.upstream import Fail, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
QUESTION = user("What is 2+2?")
CALLED = "(the executor consulted the advisor)\n"


def transcript_blocks(script: Script) -> list[list[dict[str, Any]]]:
    """The advisor legs' user message, one per consult, in order: non-empty text blocks."""
    out = []
    for leg in script.of("advisor"):
        (message,) = leg.body["messages"]
        assert message["role"] == "user"
        assert all(set(block) == {"type", "text"} and block["text"].strip() for block in message["content"])
        out.append(message["content"])
    return out


def transcripts(script: Script) -> list[str]:
    """The advisor legs' transcripts, their blocks joined."""
    return ["".join(block["text"] for block in blocks) for blocks in transcript_blocks(script)]


def extends(later: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> bool:
    """Whether ``later`` starts with every block of ``earlier`` and has more."""
    return len(later) > len(earlier) and later[: len(earlier)] == earlier


# --- append-only -------------------------------------------------------------------------------------


async def test_consults_in_one_request_append_one_segment_each(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([text("Step one."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Step two."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("Step three."), tool_use("advisor", id="toolu_3")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Advice 1.")]), Reply([text("Advice 2.")]), Reply([text("Advice 3.")]))
    response = await post(make_app(), json=request_body([QUESTION], system="Be exact."))
    assert block_types(response.json()["content"]) == ["text", *ONE_CONSULT[1:3]] * 3 + ["text"]
    first, second, third = transcripts(script)
    assert "=== Executor's system prompt ===\nBe exact.\n" in first
    assert first.endswith("\n[User]\nWhat is 2+2?\n\n[Executor]\nStep one.\n" + CALLED)
    assert second == first + "\n[User]\n(the advisor said) Advice 1.\n\n[Executor]\nStep two.\n" + CALLED
    assert third == second + "\n[User]\n(the advisor said) Advice 2.\n\n[Executor]\nStep three.\n" + CALLED
    # Block by block too: a prefix cache at block boundaries hits.
    blocks = transcript_blocks(script)
    assert extends(blocks[1], blocks[0]) and extends(blocks[2], blocks[1])


async def test_consults_across_turns_append_one_segment_each(client: anthropic.AsyncAnthropic, script: Script) -> None:
    consult(script)
    script.executor(
        Reply([text("Asking again."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("6.")]),
    ).advisor(Reply([text("Advice 2.")]))
    turn1 = await call(client, True, **request_body([QUESTION]))
    replayed = [block.model_dump(exclude_none=True) for block in turn1.content]
    assert block_types(replayed) == ONE_CONSULT
    await call(client, True, **request_body([QUESTION, assistant(replayed), user("And 3+3?")]))
    first, second = transcripts(script)
    assert second == first + (
        "\n[User]\n(the advisor said) Advice.\n\n[Executor]\nDone.\n"
        "\n[User]\nAnd 3+3?\n\n[Executor]\nAsking again.\n" + CALLED
    )
    assert extends(*transcript_blocks(script)[::-1])


async def test_a_resumed_mixed_turn_then_a_consult_appends(make_app: MakeApp, script: Script) -> None:
    # The pending consult sees the transcript up to its call, as in the loop; the advice then
    # precedes the client's tool results, and the next consult extends that transcript.
    ls = tool_use("Bash", {"command": "ls"}, id="toolu_B1")
    messages = [
        user("List the files."),
        assistant([text("Asking, then listing."), srv("srvtoolu_toolu__M1"), ls]),
        user([tool_result("toolu_B1", "a.txt")]),
    ]
    script.executor(
        Reply([text("Checking the listing."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("There is a.txt.")]),
    ).advisor(Reply([text("Look first.")]), Reply([text("Looks right.")]))
    response = await post(make_app(), json=request_body(messages))
    assert block_types(response.json()["content"]) == ["advisor_tool_result", *ONE_CONSULT]
    first, second = transcripts(script)
    assert first.endswith(
        "\n[Executor]\nAsking, then listing.\n" + CALLED + '(tool call Bash id=toolu_B1) {"command":"ls"}\n'
    )
    assert second == first + (
        "\n[User]\n(the advisor said) Look first.\n(tool result id=toolu_B1) a.txt\n"
        "\n[Executor]\nChecking the listing.\n" + CALLED
    )


# --- what prior consults and other blocks look like ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (advice("Use a map."), "(the advisor said) Use a map."),
        ([advice("Use a map.")], "(the advisor said) Use a map."),
        ("Use a map.", "(the advisor said) Use a map."),
        (
            {"type": "advisor_tool_result_error", "error_code": "overloaded"},
            "(the advisor said) The advisor is unavailable (overloaded). Continue without its advice.",
        ),
        (
            {"type": "advisor_redacted_result", "encrypted_content": SECRET},
            f"(the advisor said) {REDACTED_PLACEHOLDER}",
        ),
    ],
    ids=["object", "list", "string", "error", "redacted"],
)
async def test_prior_consults_appear_as_the_advisor_said(
    make_app: MakeApp, script: Script, content: Any, shown: str
) -> None:
    consult(script)
    messages = [
        user("q1"),
        assistant([text("Let me ask."), *advisor_pair("srvtoolu_toolu__old", content), text("Answer 1.")]),
        user("q2"),
    ]
    await post(make_app(), json=request_body(messages))
    (transcript,) = transcripts(script)
    assert f"\n[Executor]\nLet me ask.\n{CALLED}\n[User]\n{shown}\n\n[Executor]\nAnswer 1.\n" in transcript
    for leg in script.requests:
        assert SECRET.encode() not in leg.raw
        assert b"encrypted_content" not in leg.raw


async def test_an_orphaned_result_keeps_its_advice(make_app: MakeApp, script: Script) -> None:
    consult(script)
    messages = [user("q1"), assistant([result("srvtoolu_gone", advice("Old advice.")), text("ok")]), user("q2")]
    await post(make_app(), json=request_body(messages))
    (transcript,) = transcripts(script)
    assert "\n[Executor]\n[Earlier advisor response]\nOld advice.\nok\n" in transcript


async def test_images_and_documents_are_short_placeholders(make_app: MakeApp, script: Script) -> None:
    pixels = "iVBORw0KGgo" + "A" * 20_000
    pdf = "JVBERi0xLjQK" + "B" * 20_000
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixels}}
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    screenshot = tool_use("Bash", {"command": "shot"}, id="toolu_S")
    messages = [
        user([image, document, text("What do these show?")]),
        assistant([screenshot]),
        user([tool_result("toolu_S", [text("Here it is:"), image])]),
    ]
    consult(script)
    await post(make_app(), json=request_body(messages))
    (transcript,) = transcripts(script)
    assert "\n[User]\n[image omitted]\n[document omitted]\nWhat do these show?\n" in transcript
    assert "(tool result id=toolu_S) Here it is:\n[image omitted]\n" in transcript
    assert "AAAAAAAA" not in transcript
    assert "BBBBBBBB" not in transcript
    assert len(transcript) < 3000
    # Only the advisor's copy is shortened: the executor gets the blocks themselves.
    assert script.of("executor")[0].body["messages"][0]["content"][:2] == [image, document]


@pytest.mark.parametrize("as_list", [False, True])
async def test_long_tool_results_are_cut_with_a_marker(make_app: MakeApp, script: Script, as_list: bool) -> None:
    output = "".join(f"line {n:05d}\n" for n in range(500))  # 5,500 characters
    messages = [
        user("Run it."),
        assistant([tool_use("Bash", {"command": "seq"}, id="toolu_L")]),
        user([tool_result("toolu_L", [text(output)] if as_list else output)]),
    ]
    consult(script)
    await post(make_app(max_transcript_block_chars=300), json=request_body(messages))
    (transcript,) = transcripts(script)
    assert (
        f"(tool result id=toolu_L) {output[:300]}\n[... {len(output) - 300} more characters not shown]\n" in transcript
    )
    assert output[:301] not in transcript
    assert script.of("executor")[0].body["messages"][2]["content"][0]["content"] == messages[2]["content"][0]["content"]


# --- the whole-transcript budget -------------------------------------------------------------------


def long_conversation(turns: int) -> list[Any]:
    messages: list[Any] = []
    for n in range(turns):
        messages += [user(f"Question {n:03d}: " + "q" * 1000), assistant(f"Answer {n:03d}: " + "a" * 1000)]
    return [*messages, user("Final question: what now?")]


async def test_a_huge_conversation_is_shrunk_to_the_budget(make_app: MakeApp, script: Script) -> None:
    consult(script)
    body = request_body(long_conversation(200), system="SYSTEM-MARKER: you are the executor.")
    response = await post(make_app(max_transcript_chars=20_000), json=body)
    assert block_types(response.json()["content"]) == ONE_CONSULT
    (transcript,) = transcripts(script)
    assert len(transcript) <= 20_000
    # The head stays: the preamble and the executor's system prompt.
    assert transcript.startswith("Below is the transcript of another AI model (the executor)")
    assert "=== Executor's system prompt ===\nSYSTEM-MARKER: you are the executor.\n" in transcript
    # The latest turn stays, down to the call; the oldest turns go, and it says so.
    assert transcript.endswith("\n[User]\nFinal question: what now?\n\n[Executor]\nAsking.\n" + CALLED)
    assert "Question 199: " in transcript
    assert "Question 000: " not in transcript
    # The marker counts the messages left out whole: the one before the first shown is gone.
    marker = re.search(
        r"\n=== Transcript ===\n\[\.\.\. (\d+) earlier messages left out(, and part of the next)? \.\.\.\]\n",
        transcript,
    )
    assert marker is not None
    left_out = int(marker.group(1))

    def opening(i: int) -> str:
        return f"{'Question' if i % 2 == 0 else 'Answer'} {i // 2:03d}: "

    assert opening(left_out - 1) not in transcript
    # After the marker: the end of message left_out if it is cut, then whole messages.
    first_whole = re.search(r"(Question|Answer) \d{3}: ", transcript[marker.end() :])
    assert first_whole is not None and first_whole.group(0) == opening(left_out + (1 if marker.group(2) else 0))
    # The executor itself gets the whole conversation.
    assert len(json.dumps(script.of("executor")[0].body["messages"])) > 400_000


async def test_many_short_messages_that_fit_keep_every_block_whole(make_app: MakeApp, script: Script) -> None:
    # More messages than the budget holds at 1,000 characters each (the light walk comes first),
    # yet the transcript fits at the first cap: the 13,000-character
    # answer, over the second cap, must reach the advisor uncut.
    consult(script)
    long_answer = "L" * 13_000
    messages: list[Any] = []
    for n in range(30):
        messages += [user(f"q{n}"), assistant(long_answer if n == 10 else f"a{n}")]
    response = await post(make_app(max_transcript_chars=20_000), json=request_body([*messages, user("Go.")]))
    assert block_types(response.json()["content"]) == ONE_CONSULT
    (transcript,) = transcripts(script)
    assert len(messages) * 1000 > 20_000
    assert f"\n[Executor]\n{long_answer}\n" in transcript
    assert "more characters not shown" not in transcript and "left out" not in transcript


async def test_a_prompt_too_long_advisor_is_an_error_result(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("On my own.")]),
    ).advisor(Fail(400, "invalid_request_error", "prompt is too long: 212000 tokens > 200000 maximum"))
    response = await post(make_app(max_transcript_chars=20_000), json=request_body(long_conversation(200)))
    assert response.status_code == 200
    content = response.json()["content"]
    assert content[2] == result(
        content[1]["id"], {"type": "advisor_tool_result_error", "error_code": "prompt_too_long"}
    )
    assert content[3] == text("On my own.")
    (transcript,) = transcripts(script)
    assert len(transcript) <= 20_000
    assert script.of("executor")[1].body["messages"][-1] == user(
        [
            {
                **tool_result("toolu_1", "The advisor is unavailable (prompt_too_long). Continue without its advice."),
                "is_error": True,
            }
        ]
    )
