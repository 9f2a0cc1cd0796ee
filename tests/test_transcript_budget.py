"""Property test: the transcript budget (``render_transcript`` with ``max_chars``) stops renders
that are over it and skips caps by a lower bound on their length; what it returns must be what
rendering the whole transcript at every cap in turn gives, and over the budget at the last cap,
the head, a marker and the newest messages from a cut point that moves in steps of half the room
(so a growing conversation keeps its cached prefix for many consults)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from advisor_middleware.demo_cache import PromptCache
from advisor_middleware.transcript import _render, render_transcript

from .support.upstream import text, thinking, tool_use


def whole(body: dict[str, Any], messages: list[Any], cap: int) -> list[str]:
    """The head, then each message's part, of the whole transcript at ``cap``."""
    rendered = _render(body, messages, cap)
    assert rendered is not None
    return [rendered.head, *("".join(chunks) for chunks in rendered.messages)]


def budgeted(body: dict[str, Any], messages: list[Any], max_block_chars: int, max_chars: int) -> str:
    """``render_transcript`` within the budget, its blocks joined; each block has text."""
    transcript = render_transcript(body, messages, max_block_chars=max_block_chars, max_chars=max_chars)
    assert all(block.strip() for block in transcript.blocks)
    assert 0 <= transcript.settled <= len(transcript.blocks)
    return "".join(transcript.blocks)


def caps_of(max_block_chars: int) -> list[int]:
    caps = [max_block_chars]
    while caps[-1] > 1000:
        caps.append(caps[-1] // 4)
    return caps


def every_cap(body: dict[str, Any], messages: list[Any], max_block_chars: int, max_chars: int) -> str:
    """The budget without any shortcut: render the whole transcript at each cap until one fits;
    over the budget at the last, the head, a marker and the newest characters that fit."""
    cap = max_block_chars
    parts = whole(body, messages, cap)
    while len("".join(parts)) > max_chars and cap > 1000:
        cap //= 4
        parts = whole(body, messages, cap)
    text = "".join(parts)
    if len(text) <= max_chars:
        return text
    rest = "".join(parts[1:])
    # The head of a cut transcript: at the largest cap at which it is a quarter of the budget.
    heads = [whole(body, [], c)[0] for c in caps_of(max_block_chars)]
    head = next((h for h in heads if len(h) <= max_chars // 4), parts[0])
    room = max_chars - len(head) - 80
    if room <= 0:
        return text[:max_chars]
    step = max(room // 2, 1)
    cut = step  # characters left out: the fewest in whole steps that leave what fits
    while len(rest) - cut > room:
        cut += step
    ends, spans, at = [], [], 0
    for part in parts[1:]:
        spans.append((at, at + len(part)))
        at += len(part)
        ends.append(at)
    left_out = sum(1 for end in ends if end <= cut)
    partly = ", and part of the next" if any(begin < cut < end for begin, end in spans) else ""
    return f"{head}[... {left_out} earlier messages left out{partly} ...]\n{rest[cut:]}"


Draw = Any
SIZES = st.sampled_from([0, 5, 300, 999, 1001, 3200, 13_000, 40_000, 120_000])


def words(draw: Draw) -> str:
    return "x" * int(draw(SIZES)) + str(draw(st.sampled_from(["", "é", "\n", "  "])))


def result_of(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": content}]}


@st.composite
def conversations(draw: Draw) -> list[Any]:
    messages: list[Any] = []
    for n in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["user", "assistant", "tool", "advice", "odd"]))
        if kind == "user":
            messages.append({"role": "user", "content": words(draw)})
        elif kind == "assistant":
            blocks = [text(words(draw)), thinking(words(draw))]
            messages.append({"role": "assistant", "content": draw(st.permutations(blocks))})
        elif kind in ("tool", "advice"):
            call = tool_use("advisor" if kind == "advice" else "Bash", {"command": words(draw)}, id=f"toolu_{n}")
            messages.append({"role": "assistant", "content": [call]})
            output = draw(st.sampled_from(["str", "list"]))
            parts = [text(words(draw)), {"type": "image"}, text(words(draw))]
            messages.append(result_of(call["id"], words(draw) if output == "str" else parts))
        else:
            messages.append(draw(st.sampled_from(["not a message", None, {"role": "user"}, {"content": 7}])))
    return messages


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    conversations(),
    st.sampled_from([None, "s" * 3000, "s" * 90_000]),
    st.sampled_from([300, 1000, 4001, 50_000]),
    st.integers(100, 300_000),
)
@example([{"role": "user", "content": "x" * 120_000}] * 8, None, 50_000, 400_000)  # skips to the last cap
@example([], None, 4001, 100)  # the head alone is over the budget
def test_the_budget_gives_what_rendering_every_cap_gives(
    messages: list[Any], system: str | None, max_block_chars: int, max_chars: int
) -> None:
    body: dict[str, Any] = {"messages": messages, "tools": [{"name": "Bash", "description": "Runs it."}]}
    if system is not None:
        body["system"] = system
    fast = budgeted(body, messages, max_block_chars, max_chars)
    assert fast == every_cap(body, messages, max_block_chars, max_chars)
    assert len(fast) <= max_chars


@pytest.mark.parametrize("slack", [0, 1])
def test_a_transcript_that_just_fits_is_kept_whole(slack: int) -> None:
    # Thirty blocks over the next cap: a bound or a stop that overshot by a few characters a
    # field would cut them all.
    messages: list[Any] = [{"role": "assistant", "content": [text("y" * 13_000) for _ in range(30)]}]
    body: dict[str, Any] = {"messages": messages}
    exact = len("".join(whole(body, messages, 50_000)))
    fast = budgeted(body, messages, 50_000, exact - 1 + slack)
    assert fast == every_cap(body, messages, 50_000, exact - 1 + slack)
    assert ("more characters not shown" in fast) == (slack == 0)


def test_a_transcript_that_just_fits_a_harder_cap_is_cut_at_that_cap() -> None:
    # One block over the first cap, thirty under the next: the second cap fits to the character,
    # so a lower bound that overshot would skip it for a third, harder one.
    blocks = [text("z" * 60_000)] + [text("w" * 12_000) for _ in range(30)]
    messages: list[Any] = [{"role": "assistant", "content": blocks}]
    body: dict[str, Any] = {"messages": messages}
    budget = len("".join(whole(body, messages, 12_500)))
    fast = budgeted(body, messages, 50_000, budget)
    assert fast == every_cap(body, messages, 50_000, budget) == "".join(whole(body, messages, 12_500))


def test_many_short_texts_do_not_stop_the_walk_before_a_cap_that_fits() -> None:
    # The light walk gives up only when even the last cap's bound is over the budget: here that
    # bound is most of the budget (thirty short texts) and the third cap still fits.
    blocks = [text("s" * 700) for _ in range(30)] + [text("L" * 4000)]
    messages: list[Any] = [{"role": "assistant", "content": blocks}]
    body: dict[str, Any] = {"messages": messages}
    budget = len("".join(whole(body, messages, 3125)))
    fast = budgeted(body, messages, 50_000, budget)
    assert fast == every_cap(body, messages, 50_000, budget) == "".join(whole(body, messages, 3125))


@pytest.mark.parametrize("short", [30, 300])
def test_many_messages_that_fit_the_first_cap_are_rendered_at_it(short: int) -> None:
    # More messages than the budget holds at 1,000 characters each: the light walk comes first,
    # and the first cap must still be the one rendered when the transcript fits it.
    # One text is over the second cap, so a render at any harder cap would cut it.
    messages: list[Any] = [{"role": "user", "content": f"m{n}"} for n in range(short)]
    messages.insert(short // 2, {"role": "assistant", "content": [text("B" * 13_000)]})
    body: dict[str, Any] = {"messages": messages}
    budget = len("".join(whole(body, messages, 50_000)))
    assert len(messages) * 1000 > budget
    fast = budgeted(body, messages, 50_000, budget)
    assert fast == every_cap(body, messages, 50_000, budget) == "".join(whole(body, messages, 50_000))


def consults(pairs: int) -> list[Any]:
    """A long conversation of advisor consults and tool calls, with near its end: a Bash call
    whose id an advisor call reuses later, an advisor id called twice, a message whose result
    comes before the call with its id, and a message that is not an object."""
    messages: list[Any] = [{"role": "user", "content": "Start. " + "u" * 900}]
    for n in range(pairs):
        name = "advisor" if n % 3 else "Bash"
        call_id = f"toolu_{n}"
        if n in (pairs - 9, pairs - 2):
            name, call_id = ("Bash" if n == pairs - 9 else "advisor"), "toolu_reused"
        elif n in (pairs - 7, pairs - 3):
            name, call_id = "advisor", "toolu_twice"
        messages.append({"role": "assistant", "content": [text(f"Step {n}. " + "e" * 700), tool_use(name, id=call_id)]})
        messages.append(result_of(call_id, f"Result {n}. " + "r" * (300 + 17 * n)))
        if n == pairs - 5:
            odd = result_of("toolu_odd", "Early result.")
            odd["content"].append(tool_use("advisor", id="toolu_odd"))
            messages += ["not a message", odd, result_of("toolu_odd", "Late result.")]
    return messages


@pytest.mark.parametrize("pairs", [40, 120])
def test_the_newest_messages_read_as_in_a_whole_render(pairs: int) -> None:
    # Over the budget at the last cap only the newest messages are rendered, newest first: a
    # result must read as advice exactly when a whole render says so (an advisor call with its
    # id before it, in an earlier message or earlier in its own), its call left out or not, and
    # the marker must count what a whole render leaves out. Every cut point over a span of
    # budgets: between a call and its result, inside a message, at its edge.
    messages = consults(pairs)
    body: dict[str, Any] = {"messages": messages, "system": "Be brief.", "tools": [{"name": "Bash"}]}
    total = len("".join(whole(body, messages, 781)))
    seen = set()
    for max_chars in [*range(1000, 24_000, 53), total // 2, total - 1, total]:
        fast = budgeted(body, messages, 50_000, max_chars)
        assert fast == every_cap(body, messages, 50_000, max_chars), max_chars
        assert len(fast) <= max_chars
        seen.add(("advice" if "(the advisor said)" in fast else "") + ("partly" if "part of the next" in fast else ""))
    assert {"advicepartly", "advice"} <= seen, seen


def test_the_cut_stays_put_while_the_conversation_grows() -> None:
    # Consult after consult on a conversation that outgrows the budget: the transcript stays
    # within it and keeps at least half of it, and the cut moves only in steps of half the
    # room, so nearly every consult's blocks start with all the settled blocks of the one
    # before (where a prefix cache hits). A cut that followed the newest characters would move
    # at every consult.
    messages: list[Any] = [{"role": "user", "content": "Start. " + "u" * 900}]
    body: dict[str, Any] = {"messages": messages, "system": "Be brief."}
    budget = 30_000
    previous = None
    moved = 0
    for n in range(150):
        messages.append(
            {"role": "assistant", "content": [text(f"Step {n}. " + "e" * 700), tool_use("advisor", id=f"toolu_{n}")]}
        )
        transcript = render_transcript(body, messages, max_block_chars=50_000, max_chars=budget)
        size = len("".join(transcript.blocks))
        assert size <= budget
        assert transcript.settled == len(transcript.blocks)  # each ends at the advisor call
        if previous is not None:
            assert size > budget // 2 or len("".join(whole(body, messages, 781))) <= budget
            moved += transcript.blocks[: previous.settled] != previous.blocks[: previous.settled]
        previous = transcript
        messages.append(result_of(f"toolu_{n}", f"Advice {n}. " + "r" * 300))
    step = (budget - len(whole(body, messages, 781)[0]) - 80) // 2
    caps = 4  # 50,000, then each harder cap once
    assert moved <= len("".join(whole(body, messages, 781))) // step + caps
    assert moved < 149 // 5


def test_what_follows_the_newest_call_is_a_block_only_when_it_has_text() -> None:
    call = tool_use("advisor", id="toolu_1")
    for after, blocks in (([text("  ")], 2), ([text("Then ls.")], 3)):
        messages: list[Any] = [{"role": "user", "content": "Go."}, {"role": "assistant", "content": [call, *after]}]
        transcript = render_transcript({"messages": messages}, messages)
        assert len(transcript.blocks) == blocks and transcript.settled == 2
        assert all(block.strip() for block in transcript.blocks)


def test_where_the_cut_moves_the_head_is_still_read_from_cache() -> None:
    # Over the budget the cut moves now and then; the head (preamble, the executor's system
    # prompt, its tools) does not, and it keeps the system prompt as the first cap shows it,
    # long enough for Anthropic's cache (1,024 tokens), so a consult whose cut moved still
    # reads the head from cache.
    system = "You are a careful coding agent. " * 300
    messages: list[Any] = []
    for n in range(40):
        messages += [{"role": "user", "content": f"Q{n} " + "q" * 900}, {"role": "assistant", "content": "a" * 900}]
    body: dict[str, Any] = {"messages": messages, "system": system}
    cache = PromptCache()
    heads, moves = set(), 0
    previous: Any = None
    for n in range(40):
        step = [text(f"Step {n} " + "w" * 1600), tool_use("advisor", id=f"t{n}")]
        messages.append({"role": "assistant", "content": step})
        transcript = render_transcript(body, messages, max_block_chars=50_000, max_chars=40_000)
        content: list[dict[str, Any]] = [{"type": "text", "text": block} for block in transcript.blocks]
        for index in {0, transcript.settled - 1}:
            content[index]["cache_control"] = {"type": "ephemeral", "ttl": "5m"}
        billed = cache.usage({"model": "advisor", "messages": [{"role": "user", "content": content}]})
        heads.add(transcript.blocks[0])
        if previous is not None and transcript.blocks[: previous.settled] != previous.blocks[: previous.settled]:
            moves += 1
            assert billed["cache_read_input_tokens"] >= len(system) // 4, billed
        previous = transcript
        messages.append(result_of(f"t{n}", f"Advice {n}."))
    assert moves >= 1 and len(heads) == 1
    (head,) = heads
    assert system in head
