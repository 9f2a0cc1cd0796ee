"""``LiteLLMRouter``: run each leg through a ``litellm.Router`` held in-process.

Nothing here imports LiteLLM: the router is used through ``aanthropic_messages`` and its
exceptions through their ``status_code``, so ``import advisor_middleware`` never pays LiteLLM's
start-up (seconds) and installs without it. Install the extra with
``pip install 'asgi-advisor[litellm]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ..errors import UpstreamError, error_type_for_status, quoted_error_type
from ..sse import encode_json
from .base import Batch, BatchRouter, Leg, closing, forwarded_headers
from .events import AnswerReader, event_error, message_events

MESSAGES_FIELDS = frozenset(
    """model messages max_tokens system metadata stop_sequences stream temperature top_k top_p
    thinking tools tool_choice service_tier container context_management mcp_servers output_config
    output_format cache_control inference_geo speed""".split()
)
"""The fields of a leg's body that :class:`LiteLLMRouter` passes to ``aanthropic_messages``: the
Messages API's request parameters. Any other field (``api_base``, ``api_key``, ...) is dropped, so
no request chooses a deployment's URL or credentials; ``call_kwargs`` adds what an app wants."""


class LiteLLMRouter(BatchRouter):
    """Answers legs with ``await router.aanthropic_messages(**fields, stream=True)``, where
    ``router`` is a ``litellm.Router`` (LiteLLM 1.109) and ``fields`` the body's Messages API
    fields (:data:`MESSAGES_FIELDS`): its routing, retries, fallbacks and translations apply to
    every leg (docs/routers.md). Executor legs carry the advisor as a plain custom tool, so
    LiteLLM's own advisor interceptor does not take them over.

    A LiteLLM exception becomes :class:`~advisor_middleware.UpstreamError` with its
    ``status_code``, message and the provider's ``retry-after``; one without a status code is a
    bug and propagates. The caller's headers are not used. ``call_kwargs(leg)`` may add keyword
    arguments per leg (``metadata``, ``extra_headers``, ``user``...), overriding the body's.
    """

    def __init__(self, router: Any, *, call_kwargs: Callable[[Leg], Mapping[str, Any]] | None = None) -> None:
        self.router = router
        self.call_kwargs = call_kwargs

    async def batches(self, leg: Leg) -> AsyncIterator[Batch]:
        """The leg's events grouped as LiteLLM hands them over: one list per item of its stream."""
        # Only the Messages API's fields: LiteLLM also takes api_base, base_url, api_key and the
        # like as keyword arguments, and the body is the caller's to write.
        kwargs = {key: value for key, value in leg.body.items() if key in MESSAGES_FIELDS}
        if self.call_kwargs is not None:
            kwargs.update(self.call_kwargs(leg))
        kwargs["stream"] = True
        try:
            response = await self.router.aanthropic_messages(**kwargs)
        except Exception as exc:
            raise _upstream_error(exc) from exc
        if isinstance(response, Mapping):
            # A whole Message (the deployment ignored stream), without LiteLLM's _hidden_params.
            yield [*message_events({k: v for k, v in response.items() if not k.startswith("_")})]
            return
        reader = AnswerReader(leg.max_bytes, leg.raw_deltas)
        async with closing(aiter(response)) as items:
            while True:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _upstream_error(exc) from exc
                batch: Batch = []
                error = _item_events(item, reader, batch)
                if batch:  # what came before an error is still the leg's output
                    yield batch
                if error is not None:
                    raise error


def _item_events(item: object, reader: AnswerReader, into: Batch) -> UpstreamError | None:
    """The stream events in one item of LiteLLM's stream (SSE bytes in any chunking, or a
    dict, counted as its JSON), appended to ``into``; the leg's failure if the item holds one."""
    if isinstance(item, bytes | bytearray | str):
        return reader.read(item.encode() if isinstance(item, str) else bytes(item), into)
    if not isinstance(item, Mapping):
        raise UpstreamError(502, f"LiteLLM streamed a {type(item).__name__}, not SSE bytes or an event")
    event = dict(item)
    error = reader.count(len(encode_json(event)))
    if error is not None:
        return error
    if event.get("type") == "error":
        return event_error(event)
    into.append(event)
    return None


def _upstream_error(exc: Exception) -> UpstreamError:
    """A LiteLLM (or OpenAI SDK) exception as the leg's failure; anything else is re-raised."""
    if isinstance(exc, UpstreamError):
        return exc
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        raise exc
    message = str(getattr(exc, "message", None) or exc)
    error_type = quoted_error_type(message) or error_type_for_status(status)
    headers: list[tuple[bytes, bytes]] = []
    # The provider's headers: LiteLLM keeps them on the exception; its ``response`` is often a
    # stand-in without them.
    provider = getattr(exc, "litellm_response_headers", None)
    if not isinstance(provider, Mapping):
        provider = getattr(getattr(exc, "response", None), "headers", None)
    if isinstance(provider, Mapping):
        texts = [(k, v) for k, v in provider.items() if isinstance(k, str) and isinstance(v, str)]
        headers = forwarded_headers(
            [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in texts]
        )
    return UpstreamError(status, {"type": error_type, "message": message}, headers)
