"""The Messages API's other endpoints under each path: ``count_tokens`` and ``batches``.

Each function takes a parsed body that mentions the advisor and returns the body the host gets
instead, or None when the original bytes can go on as they are (docs/protocol.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from .classify import classify
from .errors import AdvisorRequestError
from .history import render_history
from .orchestrator import executor_body

__all__ = ["ENDPOINTS", "batch_body", "count_tokens_body", "endpoint_routes"]

Native = Callable[[str], bool]
"""Whether the host runs the advisor itself for an executor model (``AdvisorConfig.runs_natively``)."""


def count_tokens_body(data: dict[str, Any], native: Native) -> dict[str, Any] | None:
    """What the executor's first leg would be sent, for the host to count: Anthropic counts the
    executor's first-iteration input only. No ``stream`` or ``max_tokens`` is added."""
    plan = classify(data)
    if plan.action == "pass" or (plan.action == "orchestrate" and native(str(data.get("model")))):
        return None
    if plan.action == "rewrite":
        return plan.body
    assert plan.tool is not None and plan.history is not None
    messages, info = plan.history
    if info.pending:
        # A resumed turn's first leg follows consults that cannot run here: counted without them.
        messages, _ = render_history(data["messages"], resume=False)
    body = executor_body(data, plan.tool_index, plan.tool)
    body["messages"] = messages
    if "stream" in data:
        body["stream"] = data["stream"]
    else:
        del body["stream"]
    return body


def batch_body(data: dict[str, Any], native: Native) -> dict[str, Any] | None:
    """The batch with advisor history rendered in each request. A request that offers the
    advisor tool is refused (no consult can run inside someone else's batch job) unless its
    executor is native."""
    requests = data.get("requests")
    if not isinstance(requests, list):
        raise AdvisorRequestError("requests: Input should be a valid list")
    out = []
    changed = False
    for i, entry in enumerate(requests):
        params = entry.get("params") if isinstance(entry, dict) else None
        if not isinstance(params, dict):
            where = f"requests.{i}.params" if isinstance(entry, dict) else f"requests.{i}"
            raise AdvisorRequestError(f"{where}: Input should be a valid dictionary")
        try:
            plan = classify(params)
        except AdvisorRequestError as exc:
            raise AdvisorRequestError(f"requests.{i}.params.{exc.message}", exc.status) from None
        if plan.action == "orchestrate" and not native(str(params.get("model"))):
            raise AdvisorRequestError(
                f"requests.{i}.params.tools.{plan.tool_index}: the advisor tool cannot run inside a message "
                "batch here; send this request to the Messages endpoint instead"
            )
        if plan.action == "rewrite":
            entry = {**entry, "params": plan.body}
            changed = True
        out.append(entry)
    return {**data, "requests": out} if changed else None


ENDPOINTS: dict[str, Callable[[dict[str, Any], Native], dict[str, Any] | None]] = {
    "count_tokens": count_tokens_body,
    "batches": batch_body,
}
"""Each endpoint under a configured path, and the rewrite of its body."""


def endpoint_routes(paths: Collection[str]) -> dict[str, tuple[str, str]]:
    """Each spelling of ``{path}/count_tokens`` and ``{path}/batches`` -> (path, endpoint)."""
    return {f"{path.rstrip('/')}/{name}": (path, name) for path in paths for name in ENDPOINTS}
