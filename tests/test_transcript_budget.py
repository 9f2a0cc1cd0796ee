"""Property test: the transcript budget (``render_transcript`` with ``max_chars``) stops renders
that are over it and skips caps by a lower bound on their length (docs/performance.md, step 13);
what it returns must be what rendering the whole transcript at every cap in turn, then cutting
the oldest part, gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from advisor_middleware.transcript import _TRANSCRIPT, _render, render_transcript

from .upstream import text, thinking, tool_use


def whole(body: dict[str, Any], messages: list[Any], cap: int) -> str:
    parts = _render(body, messages, cap)
    assert parts is not None
    return "".join(parts)


def every_cap(body: dict[str, Any], messages: list[Any], max_block_chars: int, max_chars: int) -> str:
    """The budget without any shortcut: render the whole transcript at each cap until one fits."""
    cap = max_block_chars
    text = whole(body, messages, cap)
    while len(text) > max_chars and cap > 1000:
        cap //= 4
        text = whole(body, messages, cap)
    if len(text) <= max_chars:
        return text
    head, marker, rest = text.partition(_TRANSCRIPT)
    room = max_chars - len(head) - len(marker) - 80
    if room <= 0:
        return text[:max_chars]
    return f"{head}{marker}[... {len(rest) - room} characters of the earlier transcript left out ...]\n{rest[-room:]}"


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
def test_the_budget_gives_what_rendering_every_cap_gives(
    messages: list[Any], system: str | None, max_block_chars: int, max_chars: int
) -> None:
    body: dict[str, Any] = {"messages": messages, "tools": [{"name": "Bash", "description": "Runs it."}]}
    if system is not None:
        body["system"] = system
    fast = render_transcript(body, messages, max_block_chars=max_block_chars, max_chars=max_chars)
    assert fast == every_cap(body, messages, max_block_chars, max_chars)


@pytest.mark.parametrize("slack", [0, 1])
def test_a_transcript_that_just_fits_is_kept_whole(slack: int) -> None:
    # Thirty blocks over the next cap: a bound or a stop that overshot by a few characters a
    # field would cut them all.
    messages: list[Any] = [{"role": "assistant", "content": [text("y" * 13_000) for _ in range(30)]}]
    body: dict[str, Any] = {"messages": messages}
    exact = len(whole(body, messages, 50_000))
    fast = render_transcript(body, messages, max_block_chars=50_000, max_chars=exact - 1 + slack)
    assert fast == every_cap(body, messages, 50_000, exact - 1 + slack)
    assert ("more characters not shown" in fast) == (slack == 0)


def test_a_transcript_that_just_fits_a_harder_cap_is_cut_at_that_cap() -> None:
    # One block over the first cap, thirty under the next: the second cap fits to the character,
    # so a lower bound that overshot would skip it for a third, harder one.
    blocks = [text("z" * 60_000)] + [text("w" * 12_000) for _ in range(30)]
    messages: list[Any] = [{"role": "assistant", "content": blocks}]
    body: dict[str, Any] = {"messages": messages}
    budget = len(whole(body, messages, 12_500))
    fast = render_transcript(body, messages, max_block_chars=50_000, max_chars=budget)
    assert fast == every_cap(body, messages, 50_000, budget) == whole(body, messages, 12_500)
