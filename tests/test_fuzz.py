"""Property tests (hypothesis): the SSE decoder against a reference, and the event relay against
the anthropic SDK's accumulator.

Example counts are modest so the file runs in a few seconds; they are the ``max_examples`` below
and are recorded in docs/reliability.md.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor_middleware import AdvisorMiddleware, UpstreamError
from advisor_middleware.accumulate import MessageAccumulator
from advisor_middleware.routers.events import decode_events
from advisor_middleware.sse import RawDelta, SSEDecoder, encode_event, raw_delta_at, raw_delta_event

from .support.helpers import block_types, check_stream, post, read_body
from .support.upstream import (
    ADVISOR_TOOL,
    Reply,
    Script,
    reply_events,
    reply_message,
    scripted_host,
    sse,
    text,
    thinking,
    tool_use,
)

SSE_EXAMPLES = 1000
RELAY_EXAMPLES = 300
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the SSE decoder ------------------------------------------------------------------------------


def reference(stream: bytes) -> list[tuple[str, bytes]]:
    """The WHATWG event-stream rules over a whole body at once (no leading-BOM rule: neither side
    strips one): lines end at CRLF, CR or LF; a blank line dispatches the data lines, joined with
    LF, if there are any; one space after the colon is dropped; comments and other fields are
    ignored; an unterminated last line is not a line yet."""
    out: list[tuple[str, bytes]] = []
    event, data = "", list[bytes]()
    for line in re.split(rb"\r\n|\r|\n", stream)[:-1]:
        if not line:
            if data:
                out.append((event or "message", b"\n".join(data)))
            event, data = "", []
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if not name:
            continue  # a comment
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    return out


def decode_in_chunks(stream: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    out: list[tuple[str, bytes]] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in itertools.pairwise(bounds):
        out.extend(decoder.feed(stream[start:end]))  # empty chunks included: servers send them
    return out


@settings(FAST, max_examples=200)
@given(
    kind=st.one_of(
        st.sampled_from(["message_start", "content_block_delta", "message_stop", "error", "ping"]),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12),
        st.integers(),
        st.lists(st.integers(), max_size=2),
    ),
    text=st.text(max_size=12),
)
def test_encoded_events_decode_to_their_type_and_data(kind: Any, text: str) -> None:
    # The event line comes from a table for the types we send and is built for any other.
    event = {"type": kind, "delta": {"text": text}}
    ((name, data),) = SSEDecoder().feed(encode_event(event))
    assert name == (str(kind) or "message")
    assert json.loads(data) == event


# Text the SSE format and JSON have trouble with: multibyte UTF-8, U+2028/U+2029/U+0085 (line
# breaks to str.splitlines, not to SSE), NUL, a lone CR or LF inside JSON (escaped by json.dumps).
TRICKY = st.text(
    st.sampled_from(["a", " ", ":", "é", "€", "𝄞", "\u2028", "\u2029", "\u0085", "\x00", "\r", "\n", '"', "\\"]),
    max_size=12,
)
ENDINGS = st.sampled_from([b"\n", b"\r", b"\r\n"])


def cuts(size: int) -> st.SearchStrategy[list[int]]:
    """Chunk boundaries; some repeated, for the empty chunks servers send."""
    return st.lists(st.integers(0, size)).map(lambda c: c + c[: len(c) // 2])


@st.composite
def sse_lines(draw: st.DrawFn) -> bytes:
    """One event's lines: data (JSON, so one line each), comments, event names, other fields."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["data", "data", "json", "comment", "event", "id", "retry", "bare"]))
        if kind == "json":
            lines.append(b"data: " + json.dumps({"t": draw(TRICKY)}, ensure_ascii=False).encode())
        elif kind == "data":
            value = draw(TRICKY).replace("\r", "").replace("\n", "")
            lines.append(b"data:" + draw(st.sampled_from([b"", b" ", b"  "])) + value.encode())
        elif kind == "comment":
            lines.append(b":" + draw(TRICKY).replace("\r", "").replace("\n", "").encode())
        elif kind == "event":
            lines.append(b"event: " + draw(st.sampled_from([b"message_start", b"ping", b"\xc3\xa9v", b""])))
        elif kind == "bare":
            lines.append(draw(st.sampled_from([b"data", b"event", b"foo"])))
        else:
            lines.append(kind.encode() + b": 1")
    return b"".join(line + draw(ENDINGS) for line in lines) + draw(ENDINGS)


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(events=st.lists(sse_lines(), max_size=6), tail=st.binary(max_size=8), cuts=cuts(400))
def test_sse_decoder_matches_the_reference_at_any_chunk_boundaries(
    events: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(events) + tail
    assert decode_in_chunks(stream, cuts) == reference(stream)


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(stream=st.binary(max_size=200), cuts=cuts(200))
def test_sse_decoder_matches_the_reference_on_any_bytes(stream: bytes, cuts: list[int]) -> None:
    stream = stream.replace(b"\x00", b"\n")  # more line breaks than random bytes would give
    assert decode_in_chunks(stream, cuts) == reference(stream)


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(values=st.lists(TRICKY, min_size=1, max_size=5), ending=ENDINGS, cuts=cuts(300))
def test_json_events_survive_any_split(values: list[str], ending: bytes, cuts: list[int]) -> None:
    # What the relay relies on: each JSON data line comes back whole and equal, whatever the line
    # endings and wherever a multibyte character is cut.
    stream = b"".join(
        b"event: x" + ending + b"data: " + json.dumps({"v": v}, ensure_ascii=False).encode() + ending + ending
        for v in values
    )
    assert [json.loads(data)["v"] for _, data in decode_in_chunks(stream, cuts)] == values


def test_sse_decoder_known_splits() -> None:
    # The cases the properties are after, spelled out.
    assert decode_in_chunks(b"data: a\r\n\r\n", [8]) == [("message", b"a")]  # CR | LF (cuts are modulo len + 1)
    assert decode_in_chunks(b"data: a\r\ndata: b\r\n\r\n", [8, 8]) == [("message", b"a\nb")]  # an empty chunk
    assert decode_in_chunks("data: é\n\n".encode(), [7]) == [("message", "é".encode())]  # inside a character
    assert decode_in_chunks("data: \u2028\u0085\n\n".encode(), []) == [("message", "\u2028\u0085".encode())]
    # An event's end split between two chunks, and a long event in many pieces.
    assert decode_in_chunks(b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n", [17, 35]) == [("a", b"1"), ("b", b"2")]
    long = b"event: big\ndata: " + b"x" * 5000 + b"\n\n"
    assert decode_in_chunks(long, list(range(0, len(long), 7))) == [("big", b"x" * 5000)]


# --- deltas kept as bytes (RawDelta) -----------------------------------------------------------

# How an index can be written: canonical integers (the fast path), and what JSON or our reading
# must not take for one (a leading zero, a sign, a fraction, an exponent, spaces).
INDEX_TOKENS = st.one_of(
    st.integers(0, 10**25).map(lambda i: str(i).encode()),
    st.sampled_from([b"01", b"00", b"-1", b"1.0", b"1e2", b" 1", b"1 ", b"", b"x"]),
)
DELTA_FIELDS = st.sampled_from(
    [(b"text_delta", b"text"), (b"thinking_delta", b"thinking"), (b"signature_delta", b"signature")]
)


@st.composite
def delta_event(draw: st.DrawFn) -> bytes:
    """A content_block_delta in Anthropic's layout (now and then a broken one), or in another."""
    value = json.dumps(draw(TRICKY), ensure_ascii=draw(st.booleans())).encode()
    if draw(st.integers(0, 5)) == 0:  # spaces after the separators: another layout
        data = json.dumps(
            {
                "type": "content_block_delta",
                "index": draw(st.integers(0, 20)),
                "delta": {"type": "text_delta", "text": value.decode()},
            }
        ).encode()
    else:
        kind, field = draw(DELTA_FIELDS)
        end = draw(st.sampled_from([b"}}", b"}}", b"}}", b"}", b"}}}", b"]"]))
        data = (
            b'{"type":"content_block_delta","index":'
            + draw(INDEX_TOKENS)
            + b',"delta":{"type":"'
            + kind
            + b'","'
            + field
            + b'":'
            + value
            + end
        )
    return b"event: content_block_delta\ndata: " + data + b"\n\n"


STREAM_PARTS = st.one_of(
    delta_event(),
    delta_event(),
    st.sampled_from([sse(e) for e in reply_events(Reply([text("a"), tool_use("advisor")]), "m")]),
    sse_lines(),
    # Lines with no blank line after them yet: whatever comes next is the same event.
    st.sampled_from([b"data: 1\n", b": comment\n", b"id: 7\n", b"event: ping\n", b"\r"]),
)


def decode_all(chunks: list[bytes], raw_deltas: bool) -> list[Any]:
    """Every event of the chunks as a dict (a RawDelta read as one), up to the first failure,
    which ends the list as ("failed", its message)."""
    decoder = SSEDecoder()
    out: list[Any] = []
    for chunk in chunks:
        batch: list[dict[str, Any] | RawDelta] = []
        failure = decode_events(decoder, chunk, batch, raw_deltas)
        for item in batch:
            if isinstance(item, RawDelta):
                try:
                    item = raw_delta_event(item)
                except UpstreamError as exc:
                    return [*out, ("failed", str(exc))]
            out.append(item)
        if failure is not None:
            return [*out, ("failed", str(failure))]
    return out


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(parts=st.lists(STREAM_PARTS, max_size=8), cuts=st.lists(st.integers(0, 2000)), at_parts=st.lists(st.booleans()))
def test_deltas_kept_as_bytes_read_as_the_dicts_would(
    parts: list[bytes], cuts: list[int], at_parts: list[bool]
) -> None:
    # Whatever comes before or after a delta and wherever the chunks end (at event boundaries
    # too, where the decoder's whole-event path applies), a RawDelta read later is the event
    # the dict path gives, and fails where it fails, with the same message.
    stream = b"".join(parts)
    bounds = list(itertools.accumulate(len(p) for p in parts))
    marks = sorted(
        {*(c % (len(stream) + 1) for c in cuts), *(b for b, keep in zip(bounds, at_parts, strict=False) if keep)}
    )
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *marks, len(stream)])]
    assert decode_all(chunks, raw_deltas=True) == decode_all(chunks, raw_deltas=False)


def test_deltas_kept_as_bytes_known_splits() -> None:
    # A whole delta in one chunk is one event only if nothing of the last chunk is waiting: here
    # a data line is, so the delta's lines join that event (whose data is then not JSON).
    data = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}'
    delta = b"event: content_block_delta\ndata: " + data + b"\n\n"
    # The same with the line's end split between two chunks ("\r", then "\n" alone).
    for chunks in (
        [b"data: 1\n", delta],
        [b"event: ping\n", delta],
        [b"\r", delta],
        [b"data: 1\r", b"\n", delta],
        [delta[:40], delta[40:]],
    ):
        assert decode_all(chunks, raw_deltas=True) == decode_all(chunks, raw_deltas=False)
    assert decode_all([b"data: 1\n", delta], raw_deltas=True)[0][0] == "failed"
    batch: list[dict[str, Any] | RawDelta] = []
    decode_events(SSEDecoder(), delta, batch, True)
    [kept] = batch
    assert isinstance(kept, RawDelta)
    assert kept.index == 0
    assert kept.sse is delta  # the chunk itself, not a copy


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(event=delta_event(), index=st.integers(0, 10**6), first_at=st.integers(0, 100))
def test_a_raw_delta_read_at_another_index_changes_only_its_index(event: bytes, index: int, first_at: int) -> None:
    batch: list[dict[str, Any] | RawDelta] = []
    decode_events(SSEDecoder(), event, batch, True)
    if not batch or not isinstance(batch[0], RawDelta):
        return  # not Anthropic's layout, or an index we do not read: a dict, tested above
    delta = batch[0]
    head = rb'^(event: content_block_delta\ndata: \{"type":"content_block_delta","index":)\d+,'
    for moved in (raw_delta_at(delta, index), raw_delta_at(raw_delta_at(delta, first_at), index)):
        assert moved.index == index
        assert moved.sse == re.sub(head, rb"\g<1>%d," % index, event, count=1)
        try:
            expected: Any = {**raw_delta_event(delta), "index": index}
        except UpstreamError:
            expected = "failed"  # its message quotes the data, index and all
        try:
            got: Any = raw_delta_event(moved)
        except UpstreamError:
            got = "failed"
        assert got == expected


ACC_DELTAS = {
    "text_delta": ("text", TRICKY),
    "thinking_delta": ("thinking", TRICKY),
    "signature_delta": ("signature", st.sampled_from(["s1", "s2"])),
    "citations_delta": ("citation", st.fixed_dictionaries({"cited_text": TRICKY})),
    "input_json_delta": ("partial_json", st.sampled_from(['{"a"', ": 1}", "", " "])),
}


@st.composite
def acc_event(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["start", "block", "delta", "delta", "delta", "delta", "stop", "end"]))
    index = draw(st.integers(0, 2))
    if kind == "start":  # sometimes with a block already in it, as a message_start may carry
        start = reply_events(Reply([]), "m")[0]
        start["message"]["content"] = draw(st.sampled_from([[], [text("")], [text("a"), text("b")]]))
        return start
    if kind == "block":
        content = draw(st.sampled_from([text(""), thinking("", ""), {**tool_use("t", {}), "input": {}}]))
        return {"type": "content_block_start", "index": index, "content_block": content}
    if kind == "stop":
        return {"type": "content_block_stop", "index": index}
    if kind == "end":
        return {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}
    dtype = draw(st.sampled_from(sorted(ACC_DELTAS)))
    field, values = ACC_DELTAS[dtype]
    return {"type": "content_block_delta", "index": index, "delta": {"type": dtype, field: draw(values)}}


@settings(FAST, max_examples=SSE_EXAMPLES)
@given(events=st.lists(st.tuples(acc_event(), st.booleans()), max_size=14))
def test_deltas_kept_as_bytes_accumulate_to_the_same_message(events: list[tuple[dict[str, Any], bool]]) -> None:
    # Any mix of deltas fed as dicts and kept as bytes, in any order of starts, restarts and
    # stops, builds the Message that feeding them all as dicts builds. (The relay keeps only
    # the deltas of text and thinking blocks: an input_json_delta is read at its block's stop.)
    events.insert(0, (reply_events(Reply([]), "m")[0], False))  # later ones start the message again
    as_dicts, mixed = MessageAccumulator(), MessageAccumulator()
    for event, keep in events:
        try:
            as_dicts.feed(json.loads(json.dumps(event)))
        except UpstreamError:
            # A block started past the next index: the stream is broken, read either way.
            with pytest.raises(UpstreamError):
                mixed.feed(json.loads(json.dumps(event)))
            return
        if keep and event["type"] == "content_block_delta" and event["delta"]["type"] != "input_json_delta":
            batch: list[dict[str, Any] | RawDelta] = []
            decode_events(SSEDecoder(), sse(event), batch, True)
            assert isinstance(batch[0], RawDelta)
            mixed.pending.append(batch[0])
        else:
            mixed.feed(json.loads(json.dumps(event)))
    assert mixed.complete() == as_dicts.complete()


def test_a_message_started_again_keeps_nothing_of_the_first() -> None:
    # Deltas of the first start, kept as bytes or joined from dicts, never reach the second's
    # blocks (which a message_start may carry), nor does a tool input that was never stopped.
    first = [
        reply_events(Reply([]), "m")[0],
        {"type": "content_block_start", "index": 0, "content_block": {**tool_use("t", {}), "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}},
        {"type": "content_block_start", "index": 1, "content_block": text("")},
    ]
    again = reply_events(Reply([]), "m")[0]
    again["message"]["content"] = [text("x"), text("y")]
    late = {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "old"}}
    acc = MessageAccumulator()
    for event in first:
        acc.feed(event)
    batch: list[dict[str, Any] | RawDelta] = []
    decode_events(SSEDecoder(), sse(late), batch, True)
    assert isinstance(batch[0], RawDelta)
    acc.pending.append(batch[0])
    for event in (again, {"type": "content_block_stop", "index": 0}, {"type": "content_block_stop", "index": 1}):
        acc.feed(event)
    assert acc.complete()["content"] == [text("x"), text("y")]


# --- the relay ------------------------------------------------------------------------------------

WORDS = st.text(st.sampled_from('ab é\u2028{}"\\'), min_size=1, max_size=8)


@st.composite
def leg(draw: st.DrawFn, *, calls: bool, client_tool: bool) -> Reply:
    """One executor leg: text, thinking and client tool_use blocks in any order, with advisor
    calls if ``calls`` (and at least one client tool if ``client_tool``)."""
    blocks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "thinking", "tool"] if client_tool or not calls else ["text", "thinking"]))
        if kind == "text":
            blocks.append(text(draw(WORDS)))
        elif kind == "thinking":
            blocks.append(thinking(draw(WORDS), draw(st.sampled_from(["sig", "c2ln"]))))
        else:
            blocks.append(tool_use("get_weather", {"city": draw(WORDS)}))
    if client_tool:
        blocks.insert(draw(st.integers(0, len(blocks))), tool_use("get_weather", {"city": "Paris"}))
    if calls:
        for _ in range(draw(st.integers(1, 2))):
            blocks.insert(draw(st.integers(0, len(blocks))), tool_use("advisor", {}))
    stop = "tool_use" if calls or client_tool else draw(st.sampled_from(["end_turn", "max_tokens", "stop_sequence"]))
    return Reply(
        blocks, stop_reason=stop, input_tokens=draw(st.integers(0, 50)), output_tokens=draw(st.integers(1, 50))
    )


@st.composite
def executor_turn(draw: st.DrawFn) -> list[Reply]:
    """Legs that call the advisor, then a last leg that ends the turn (no call, or a call with a
    client tool, which hands the turn back to the client)."""
    legs = [draw(leg(calls=True, client_tool=False)) for _ in range(draw(st.integers(0, 2)))]
    ends_with_tool = draw(st.booleans())
    legs.append(draw(leg(calls=ends_with_tool, client_tool=ends_with_tool)))
    return legs


def expected_types(legs: list[Reply]) -> list[str]:
    """The client's block types: live blocks in leg order, each call as server_tool_use, the
    results after the leg, then whatever was held (client tools; anything after a call)."""
    out: list[str] = []
    for reply in legs:
        held: list[str] = []
        calls = 0
        for block in reply.blocks:
            if block["type"] == "tool_use" and block["name"] == "advisor":
                out.append("server_tool_use")
                calls += 1
            elif block["type"] == "tool_use" or calls:
                held.append(block["type"])
            else:
                out.append(block["type"])
        out += ["advisor_tool_result"] * calls + held
    return out


@pytest.mark.anyio
@settings(FAST, max_examples=RELAY_EXAMPLES)
@given(legs=executor_turn(), streaming=st.booleans())
async def test_relayed_streams_are_accepted_by_the_sdk(legs: list[Reply], streaming: bool) -> None:
    script = Script().executor(*legs)
    consults = sum(1 for reply in legs for b in reply.blocks if b.get("name") == "advisor")
    script.advisor(*[Reply([text(f"advice {i}")]) for i in range(consults)])
    body = {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "go"}],
        "tools": [ADVISOR_TOOL],
        "stream": streaming,
    }
    response = await post(AdvisorMiddleware(scripted_host(script)), json=body)
    assert response.status_code == 200, response.text
    if streaming:
        _, message = check_stream(response.content)
        assert message is not None
        content = message.model_dump()["content"]
        stop_reason = message.stop_reason
    else:
        content = response.json()["content"]
        stop_reason = response.json()["stop_reason"]
    assert block_types(content) == expected_types(legs)
    assert stop_reason == legs[-1].stop_reason
    assert len(script.of("executor")) == len(legs) and len(script.of("advisor")) == consults
    texts = [b["text"] for b in content if b["type"] == "text"]
    assert texts == [b["text"] for reply in legs for b in reply.blocks if b["type"] == "text"]


# --- the relay, against broken upstream streams ----------------------------------------------------

BROKEN_EXAMPLES = 300


def _event(kind: str, index: int, block: str) -> dict[str, Any]:
    if kind == "message_start":
        return reply_events(Reply([]), "exec")[0]
    if kind == "content_block_start":
        name = {"advisor": "advisor", "tool": "get_weather"}.get(block)
        content = {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}} if name else text("")
        return {"type": kind, "index": index, "content_block": content}
    if kind == "content_block_delta":
        return {"type": kind, "index": index, "delta": {"type": "text_delta", "text": "w"}}
    if kind == "content_block_stop":
        return {"type": kind, "index": index}
    if kind == "message_delta":
        return {"type": kind, "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}
    return {"type": "message_stop"}


ANY_EVENT = st.builds(
    _event,
    st.sampled_from(
        ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "stop"]
    ),
    st.integers(0, 3),
    st.sampled_from(["text", "advisor", "tool"]),
)


class Replay:
    """A host that answers executor legs with these event lists (then a bare finished message)
    and the advisor with a good answer."""

    def __init__(self, legs: list[list[dict[str, Any]]]) -> None:
        self.legs = legs

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        if dict(scope["headers"]).get(b"x-advisor-leg") == b"advisor":
            events = reply_events(Reply([text("advice")]), "adv")
        else:
            events = self.legs.pop(0) if self.legs else reply_events(Reply([text("end")]), "exec")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"".join(sse(e) for e in events)})


@pytest.mark.anyio
@settings(FAST, max_examples=BROKEN_EXAMPLES)
@given(legs=st.lists(st.lists(ANY_EVENT, max_size=10), min_size=1, max_size=3))
async def test_broken_upstream_streams_never_break_the_clients_stream(legs: list[list[dict[str, Any]]]) -> None:
    # Events out of order, blocks started twice or never stopped, stops for unknown blocks: the
    # client still gets a well-formed stream (ended by an error event if need be) or an error status.
    body = {"model": "exec", "max_tokens": 1024, "messages": [{"role": "user", "content": "go"}], "stream": True}
    response = await post(AdvisorMiddleware(Replay(legs)), json={**body, "tools": [ADVISOR_TOOL]})
    if response.status_code == 200:
        check_stream(response.content)
    else:
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "api_error"


MALFORMED_EXAMPLES = 300
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


@st.composite
def malformed(draw: st.DrawFn, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` with one to three fields (or fields of a field) replaced by any JSON value."""
    events = json.loads(json.dumps(events))
    for _ in range(draw(st.integers(1, 3))):
        event = events[draw(st.integers(0, len(events) - 1))]
        key = draw(st.sampled_from([k for k in event if k != "type"] or ["extra"]))
        if isinstance(event.get(key), dict) and event[key] and draw(st.booleans()):
            event[key][draw(st.sampled_from(sorted(event[key])))] = draw(ANY_JSON)
        else:
            event[key] = draw(ANY_JSON)
    return events


ASKING = reply_events(Reply([text("a"), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), "exec")


@pytest.mark.anyio
@settings(FAST, max_examples=MALFORMED_EXAMPLES)
@given(events=malformed(ASKING), streaming=st.booleans())
async def test_malformed_upstream_events_are_a_502_never_an_internal_error(
    events: list[dict[str, Any]], streaming: bool
) -> None:
    # Fields of the wrong type (an index that is a list, a block that is a number, usage that is a
    # string): the leg's answer is broken, which is a 502 (or an api_error event), not a 500.
    body = {"model": "exec", "max_tokens": 1024, "messages": [{"role": "user", "content": "go"}]}
    response = await post(
        AdvisorMiddleware(Replay([events])), json={**body, "stream": streaming, "tools": [ADVISOR_TOOL]}
    )
    assert "internal error" not in response.text
    assert response.status_code in (200, 502), response.text
    if response.status_code == 502:
        assert response.json()["error"]["type"] == "api_error"
    elif streaming:
        check_stream(response.content, sdk=False)  # what the executor wrote is relayed as it is


class JSONReplay:
    """A host that ignores ``stream: true`` and answers the executor with this one JSON
    Message, and the advisor with a good answer."""

    def __init__(self, message: Any) -> None:
        self.message = message

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        advisor = dict(scope["headers"]).get(b"x-advisor-leg") == b"advisor"
        message = reply_message(Reply([text("advice")]), "adv") if advisor else self.message
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(message).encode()})


@st.composite
def malformed_message(draw: st.DrawFn) -> Any:
    """A Message asking the advisor, with one to three fields (or fields of its blocks) replaced
    by any JSON value."""
    message: Any = json.loads(json.dumps(reply_message(ASKING_REPLY, "exec")))
    for _ in range(draw(st.integers(1, 3))):
        blocks = message.get("content") if isinstance(message, dict) else None
        if isinstance(blocks, list) and blocks and isinstance(blocks[0], dict) and draw(st.booleans()):
            target = blocks[draw(st.integers(0, len(blocks) - 1))]
            if isinstance(target, dict):
                target[draw(st.sampled_from([*sorted(target), "extra"]))] = draw(ANY_JSON)
        elif isinstance(message, dict):
            message[draw(st.sampled_from(sorted(message)))] = draw(ANY_JSON)
    return message


ASKING_REPLY = Reply([text("a"), tool_use("advisor", id="toolu_1")], stop_reason="tool_use")


@pytest.mark.anyio
@settings(FAST, max_examples=MALFORMED_EXAMPLES)
@given(message=malformed_message(), streaming=st.booleans())
async def test_malformed_json_messages_are_a_502_never_an_internal_error(message: Any, streaming: bool) -> None:
    # A host that answers one JSON Message of the wrong shape: the same as a broken stream.
    body = {"model": "exec", "max_tokens": 1024, "messages": [{"role": "user", "content": "go"}]}
    response = await post(
        AdvisorMiddleware(JSONReplay(message)), json={**body, "stream": streaming, "tools": [ADVISOR_TOOL]}
    )
    assert "internal error" not in response.text
    assert response.status_code in (200, 502), response.text
    if response.status_code == 502:
        assert response.json()["error"]["type"] == "api_error"
    elif streaming:
        check_stream(response.content, sdk=False)
