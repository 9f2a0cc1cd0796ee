"""What the middleware reports (docs/observability.md): OpenTelemetry GenAI spans and metrics,
read back with the real SDK's in-memory exporter and metric reader; the trace context on every
leg, as an instrumented FastAPI host sees it; the package without OpenTelemetry installed; and the
leg and request log records, which never hold content."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from advisor_middleware import AdvisorMiddleware, AdvisorProfile, HTTPRouter

from .support.helpers import http_scope, post, wait_until
from .support.servers import uvicorn_server
from .support.upstream import Fail, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()
SECRET = "CONTENT-5d1e-do-not-trace"
ADVICE = "ADVICE-77ab-keep-it-private"


@pytest.fixture(scope="module", autouse=True)
def providers() -> Iterator[None]:
    """The SDK as an application sets it up: global tracer and meter providers (set once per
    process; the middleware's tracer and instruments follow them)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    yield


@pytest.fixture(autouse=True)
def spans() -> Iterator[None]:
    EXPORTER.clear()
    yield


def models() -> tuple[str, str]:
    """An executor and an advisor model of this test's own, to find its metric points."""
    tag = uuid.uuid4().hex[:8]
    return f"exec-{tag}", f"adv-{tag}"


def body(executor: str, advisor: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": executor,
        "max_tokens": 100,
        "stream": True,
        "system": f"system: {SECRET}",
        "messages": [{"role": "user", "content": f"Here: {SECRET}"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": advisor}],
        **fields,
    }


def consulting(script: Script, advisor_turn: Reply | Fail) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_T")], stop_reason="tool_use", cache_read=30),
        Reply([text("Done.")], cache_creation=7),
    ).advisor(advisor_turn)


def by_name(finished: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        out.setdefault(span.name, []).append(span)
    return out


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def metric_points(name: str, model: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, point) of metric ``name`` whose request model is ``model``."""
    data = READER.get_metrics_data()
    out = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.get("gen_ai.request.model") == model:
                        out.append((attributes, point))
    return out


def consult_count(outcome: str) -> float:
    data = READER.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "advisor_middleware.consults":
                    for point in metric.data.data_points:
                        if (point.attributes or {}).get("advisor_middleware.consult.outcome") == outcome:
                            total += point.value  # type: ignore[union-attr]
    return total


async def test_a_consult_is_one_agent_span_with_its_legs_and_its_tool_call(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)], input_tokens=40, output_tokens=12))
    ok_before = consult_count("ok")
    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True)
    response = await post(app, json=body(executor, advisor, stream=False))
    assert response.status_code == 200
    spans = by_name(EXPORTER.get_finished_spans())
    [agent] = spans["invoke_agent advisor"]
    legs = spans[f"chat {executor}"]
    [tool] = spans["execute_tool advisor"]
    [advisor_leg] = spans[f"chat {advisor}"]
    assert len(legs) == 2
    assert agent.parent is None and agent.kind is SpanKind.INTERNAL
    assert agent.attributes is not None and dict(agent.attributes) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "advisor",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": executor,
        "advisor_middleware.request_id": agent.attributes["advisor_middleware.request_id"],
        "gen_ai.usage.input_tokens": (10 + 30) + (10 + 7) + 40,
        "gen_ai.usage.output_tokens": 5 + 5 + 12,
        "advisor_middleware.consults": 1,
    }
    assert [parent_of(s) for s in (*legs, tool)] == [span_id(agent)] * 3
    assert parent_of(advisor_leg) == span_id(tool), "the consult's span holds its advisor leg"
    assert tool.kind is SpanKind.INTERNAL and tool.attributes is not None
    assert {k: tool.attributes[k] for k in ("gen_ai.tool.name", "gen_ai.tool.type")} == {
        "gen_ai.tool.name": "advisor",
        "gen_ai.tool.type": "extension",
    }
    assert tool.attributes["gen_ai.tool.call.id"] == response.json()["content"][1]["id"]
    assert tool.attributes["advisor_middleware.consult.outcome"] == "ok"
    first = legs[0].attributes
    assert legs[0].kind is SpanKind.CLIENT and first is not None
    assert {k: v for k, v in first.items() if k != "gen_ai.response.id"} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": executor,
        "gen_ai.request.stream": True,
        "gen_ai.request.max_tokens": 100,
        "advisor_middleware.leg": "executor",
        "gen_ai.response.model": executor,
        "gen_ai.response.finish_reasons": ("tool_use",),
        "gen_ai.response.time_to_first_chunk": first["gen_ai.response.time_to_first_chunk"],
        # The conventions' Anthropic rule: input counts the cache's reads and writes.
        "gen_ai.usage.input_tokens": 40,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 30,
        "gen_ai.usage.cache_creation.input_tokens": 0,
    }
    ttfb = first["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttfb, float) and legs[0].end_time is not None and legs[0].start_time is not None
    assert 0 < ttfb <= (legs[0].end_time - legs[0].start_time) / 1e9
    assert str(first["gen_ai.response.id"]).startswith("msg_")
    assert advisor_leg.attributes is not None and advisor_leg.attributes["advisor_middleware.leg"] == "advisor"
    assert advisor_leg.attributes["gen_ai.usage.input_tokens"] == 40
    assert all(s.status.status_code is StatusCode.UNSET for s in EXPORTER.get_finished_spans())
    # Each leg carried its own span's context, in place of none.
    sent = [r.headers.get("traceparent") for r in script.requests]
    assert sent == [traceparent(legs[0]), traceparent(advisor_leg), traceparent(legs[1])]
    # Metrics: tokens and durations per leg, by leg kind; the consult counted as ok.
    tokens = {
        (a["advisor_middleware.leg"], a["gen_ai.token.type"]): p.sum
        for a, p in metric_points("gen_ai.client.token.usage", executor)
    }
    assert tokens == {("executor", "input"): 40 + 17, ("executor", "output"): 10}
    [(adv_attributes, adv_duration)] = metric_points("gen_ai.client.operation.duration", advisor)
    assert adv_attributes["advisor_middleware.leg"] == "advisor" and adv_duration.count == 1
    assert "error.type" not in adv_attributes
    assert consult_count("ok") == ok_before + 1


async def test_no_content_on_spans_unless_asked_for(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)]))
    await post(AdvisorMiddleware(scripted_host(script), opentelemetry=True), json=body(executor, advisor))
    traced = json.dumps([dict(s.attributes or {}) for s in EXPORTER.get_finished_spans()])
    assert SECRET not in traced and ADVICE not in traced
    EXPORTER.clear()
    consulting(script, Reply([text(ADVICE)]))
    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True, capture_content=True)
    await post(app, json=body(executor, advisor))
    spans = by_name(EXPORTER.get_finished_spans())
    first = spans[f"chat {executor}"][0].attributes or {}
    assert json.loads(str(first["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": f"Here: {SECRET}"}]}
    ]
    assert SECRET in str(first["gen_ai.system_instructions"])
    output = json.loads(str((spans[f"chat {advisor}"][0].attributes or {})["gen_ai.output.messages"]))
    assert output == [{"role": "assistant", "parts": [{"type": "text", "content": ADVICE}]}]


async def test_a_failing_advisor_ends_its_consult_with_the_error_code(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Fail(529, "overloaded_error", "busy"))
    failed_before = consult_count("overloaded")
    response = await post(AdvisorMiddleware(scripted_host(script), opentelemetry=True), json=body(executor, advisor))
    assert response.status_code == 200
    spans = by_name(EXPORTER.get_finished_spans())
    [tool] = spans["execute_tool advisor"]
    [advisor_leg] = spans[f"chat {advisor}"]
    assert tool.status.status_code is StatusCode.ERROR and tool.attributes is not None
    assert tool.attributes["advisor_middleware.consult.outcome"] == "overloaded"
    assert tool.attributes["advisor_middleware.consult.error_code"] == "overloaded"
    assert tool.attributes["error.type"] == "overloaded"
    assert advisor_leg.status.status_code is StatusCode.ERROR
    assert advisor_leg.attributes is not None and advisor_leg.attributes["error.type"] == "overloaded_error"
    [agent] = spans["invoke_agent advisor"]
    assert agent.status.status_code is StatusCode.UNSET, "a failed consult does not fail the request"
    [(attributes, _)] = metric_points("gen_ai.client.operation.duration", advisor)
    assert attributes["error.type"] == "overloaded_error"
    assert consult_count("overloaded") == failed_before + 1


async def test_an_advisor_past_its_timeout_is_a_timed_out_leg_in_a_failed_consult(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Reply([text("Thinking...")], hang_after=3, hang=600))
    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True, advisor_timeout=0.2)
    with anyio.fail_after(30):
        response = await post(app, json=body(executor, advisor))
    assert response.status_code == 200
    spans = by_name(EXPORTER.get_finished_spans())
    [tool] = spans["execute_tool advisor"]
    [advisor_leg] = spans[f"chat {advisor}"]
    assert tool.attributes is not None and tool.attributes["error.type"] == "execution_time_exceeded"
    assert advisor_leg.attributes is not None and advisor_leg.attributes["error.type"] == "timeout"
    assert "gen_ai.response.time_to_first_chunk" in advisor_leg.attributes, "it had begun to answer"


async def test_a_client_that_leaves_mid_consult_ends_every_span(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Reply([text("Thinking...")], hang_after=3, hang=600))
    raw = json.dumps(body(executor, advisor)).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await wait_until(lambda: "advisor" in script.streamed, 30, "the advisor leg streaming")
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True)
    with anyio.fail_after(30):
        await app(http_scope([(b"content-type", b"application/json")]), receive, send)
    spans = by_name(EXPORTER.get_finished_spans())
    [agent] = spans["invoke_agent advisor"]
    [tool] = spans["execute_tool advisor"]
    [advisor_leg] = spans[f"chat {advisor}"]
    for span in (agent, tool, advisor_leg):
        assert span.status.status_code is StatusCode.ERROR, span.name
        assert span.attributes is not None and span.attributes["error.type"] == "client_gone", span.name


async def test_an_instrumented_fastapi_host_nests_each_leg_under_its_span(script: Script) -> None:
    # Over a real socket, so that only the traceparent header can link the two sides.
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)]))
    host = FastAPI()
    host.mount("/", scripted_host(script))
    FastAPIInstrumentor.instrument_app(host)
    try:
        async with uvicorn_server(host) as url:
            router = HTTPRouter(url)
            app = AdvisorMiddleware(scripted_host(Script()), router=router, opentelemetry=True)
            response = await post(app, json=body(executor, advisor))
            await router.aclose()
    finally:
        FastAPIInstrumentor.uninstrument_app(host)
    assert response.status_code == 200
    finished = EXPORTER.get_finished_spans()
    ours = {span_id(s): s.name for s in finished if s.name.startswith("chat ")}
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 3
    assert sorted(ours[parent_of(s) or 0] for s in servers) == sorted(
        [f"chat {executor}", f"chat {executor}", f"chat {advisor}"]
    )
    [agent] = [s for s in finished if s.name == "invoke_agent advisor"]
    assert {s.context.trace_id for s in servers if s.context} == {agent.context.trace_id if agent.context else 0}


async def test_in_an_instrumented_fastapi_app_the_host_spans_of_each_leg_nest_under_it(script: Script) -> None:
    # The usual wiring: the middleware added to the app, the app instrumented as a whole. The
    # instrumentation's server span holds ours; what the host does for a leg (here, a span
    # around its route) nests under that leg's span, in-process.
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)]))
    inner = scripted_host(script)
    tracer = trace.get_tracer("the host")

    async def traced_route(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("the host serves a leg"):
            await inner(scope, receive, send)

    app = FastAPI()
    app.mount("/", traced_route)
    app.add_middleware(AdvisorMiddleware, opentelemetry=True)
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])
    try:
        response = await post(app, json=body(executor, advisor))
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert response.status_code == 200
    finished = EXPORTER.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    [agent] = [s for s in finished if s.name == "invoke_agent advisor"]
    assert parent_of(agent) == span_id(server)
    ours = {span_id(s): s.name for s in finished if s.name.startswith("chat ")}
    served = [ours[parent_of(s) or 0] for s in finished if s.name == "the host serves a leg"]
    assert sorted(served) == sorted([f"chat {executor}", f"chat {executor}", f"chat {advisor}"])


async def test_the_request_span_continues_the_callers_trace(script: Script) -> None:
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)]))
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True)
    await post(app, json=body(executor, advisor), headers={"traceparent": caller})
    [agent] = by_name(EXPORTER.get_finished_spans())["invoke_agent advisor"]
    assert agent.context is not None and agent.parent is not None
    assert (agent.context.trace_id, agent.parent.span_id) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    assert all(r.headers["traceparent"] != caller for r in script.requests), "each leg gets its own span's context"


async def test_a_fallback_is_an_event_on_its_consult_a_count_and_a_record(caplog: pytest.LogCaptureFixture) -> None:
    # A profile's chain: the first advisor model is overloaded, the next one answers.
    executor, _ = models()
    failed_model, next_model = models()
    script = Script().executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), Reply([text("Done.")])
    )
    script.model(failed_model, Fail(529, "overloaded_error")).model(next_model, Reply([text("Advice.")]))
    chain = [AdvisorProfile(match="*", models=(failed_model, next_model))]
    app = AdvisorMiddleware(scripted_host(script), opentelemetry=True, advisor_profiles=chain)
    with caplog.at_level(logging.INFO, logger="advisor_middleware"):
        await post(app, json=body(executor, "any-advisor"))
    [tool] = by_name(EXPORTER.get_finished_spans())["execute_tool advisor"]
    [event] = tool.events
    assert event.name == "advisor_middleware.fallback"
    assert dict(event.attributes or {}) == {
        "failed_model": failed_model,
        "next_model": next_model,
        "error_code": "overloaded",
    }
    chats = by_name(EXPORTER.get_finished_spans())
    assert [len(chats[f"chat {m}"]) for m in (failed_model, next_model)] == [1, 1]
    data = READER.get_metrics_data()
    counted = [
        p.value  # type: ignore[union-attr]
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "advisor_middleware.fallbacks"
        for p in m.data.data_points
        if (p.attributes or {}).get("gen_ai.request.model") == failed_model
    ]
    assert counted == [1]
    [record] = [r for r in caplog.records if getattr(r, "next_model", None) == next_model]
    assert (record.failed_model, record.error_code) == (failed_model, "overloaded")  # type: ignore[attr-defined]
    assert record.request_id.startswith("advreq_")  # type: ignore[attr-defined]


async def test_leg_and_request_records_carry_the_facts_and_no_content(
    script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    executor, advisor = models()
    consulting(script, Reply([text(ADVICE)], input_tokens=40, output_tokens=12))
    with caplog.at_level(logging.INFO, logger="advisor_middleware"):
        response = await post(AdvisorMiddleware(scripted_host(script)), json=body(executor, advisor))
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "advisor_middleware" and hasattr(r, "request_id")]
    legs = [r for r in records if hasattr(r, "leg")]
    [whole] = [r for r in records if hasattr(r, "consults")]
    facts = [
        {
            k: getattr(r, k)
            for k in ("leg", "model", "status", "input_tokens", "output_tokens", "cache_read_input_tokens")
        }
        for r in legs
    ]
    assert facts == [
        {
            "leg": "executor",
            "model": executor,
            "status": "ok",
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 30,
        },
        {
            "leg": "advisor",
            "model": advisor,
            "status": "ok",
            "input_tokens": 40,
            "output_tokens": 12,
            "cache_read_input_tokens": 0,
        },
        {
            "leg": "executor",
            "model": executor,
            "status": "ok",
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 0,
        },
    ]
    for record in legs:
        assert 0 <= record.ttfb_s <= record.duration_s  # type: ignore[attr-defined]
    assert {r.request_id for r in records} == {whole.request_id}
    assert (whole.outcome, whole.consults, whole.consult_outcomes) == ("ok", 1, ["ok"])  # type: ignore[attr-defined]
    assert whole.tokens == {  # type: ignore[attr-defined]
        executor: {
            "input_tokens": 20,
            "output_tokens": 10,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 7,
        },
        advisor: {
            "input_tokens": 40,
            "output_tokens": 12,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }
    logged = repr([vars(r) for r in caplog.records]) + caplog.text
    assert SECRET not in logged and ADVICE not in logged
    assert not EXPORTER.get_finished_spans(), "no span with opentelemetry off"


BLOCKER = """
import sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

if BLOCK:
    sys.meta_path.insert(0, NoOpenTelemetry())
"""

WITHOUT_OTEL = """
import anyio, httpx
from advisor_middleware import AdvisorMiddleware
from tests.support.upstream import Reply, Script, scripted_host, text, tool_use

async def main():
    script = Script()
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), Reply([text("Done.")])
    ).advisor(Reply([text("Advice.")]))
    app = AdvisorMiddleware(scripted_host(script))
    body = {"model": "exec", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "adv"}]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/v1/messages", json=body)
    assert [b["type"] for b in response.json()["content"]] == [
        "text", "server_tool_use", "advisor_tool_result", "text"
    ], response.text
    assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported while off"
    try:
        AdvisorMiddleware(scripted_host(script), opentelemetry=True)
    except ImportError as exc:
        print("refused:", exc)
    else:
        print("accepted")

anyio.run(main)
"""


@pytest.mark.parametrize("installed", [False, True])
def test_the_package_runs_without_opentelemetry_and_never_imports_it_when_off(installed: bool) -> None:
    # A subprocess whose import system refuses opentelemetry, as if it were not installed; and
    # one where it is installed, to show that turned off it is not even imported.
    program = textwrap.dedent(BLOCKER).replace("BLOCK", str(not installed)) + WITHOUT_OTEL
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    if installed:
        assert done.stdout.strip() == "accepted"
    else:
        assert done.stdout.startswith("refused: opentelemetry=True needs the OpenTelemetry API"), done.stdout
