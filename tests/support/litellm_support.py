"""LiteLLM test support: hooks a proxy loads from a test ``config.yaml``
(``tests.support.litellm_support.<name>``), and a spy on LiteLLM's own advisor interceptor.

* ``recorder``: a LiteLLM ``CustomLogger`` on ``litellm_settings.callbacks``. It records, for every
  call the proxy makes, the caller's key (alias and hash, as the proxy resolved it), the model
  group, the deployment's model and the cost LiteLLM computed: the fields of LiteLLM's
  ``StandardLoggingPayload``, which is also what its spend logs are written from. Denied calls
  (auth, model access) are recorded too, from ``async_post_call_failure_hook``. With ``LEG_LOG``
  set in the environment, each record is also appended to that file as a JSON line (for a proxy
  running in another process).
* ``auth``: a ``general_settings.custom_auth`` with a fixed key table (``KEYS``), for per-key model
  access without a database. LiteLLM's virtual keys live in its Postgres database (``No
  connected db.`` without one); custom auth is its documented way to bring keys from elsewhere,
  and with ``enable_post_custom_auth_checks`` + ``custom_auth_run_common_checks`` LiteLLM itself
  enforces the returned ``models`` list on every request.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from litellm.integrations.custom_logger import CustomLogger
from litellm.llms.anthropic.messages.native.interceptors.advisor import AdvisorOrchestrationHandler
from litellm.proxy._types import UserAPIKeyAuth

if TYPE_CHECKING:
    import pytest

KEYS: dict[str, tuple[str, list[str]]] = {
    "sk-full-caller-0001": ("full-caller", ["exec", "adv", "adv-oai"]),
    "sk-cheap-caller-0002": ("cheap-caller", ["exec"]),
}
"""key -> (alias, the model groups it may call)."""


@dataclass
class Call:
    outcome: str  # "success", "failure" or "denied"
    key_alias: str | None
    key_hash: str | None
    model_group: str | None
    model: str | None
    cost: float | None = None


class Recorder(CustomLogger):  # type: ignore[misc]  # LiteLLM is Any to mypy (pyproject.toml)
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def _add(self, call: Call) -> None:
        self.calls.append(call)
        path = os.environ.get("LEG_LOG")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(asdict(call)) + "\n")

    def _logged(self, outcome: str, kwargs: dict[str, Any]) -> None:
        payload = kwargs.get("standard_logging_object") or {}
        metadata = payload.get("metadata") or {}
        self._add(
            Call(
                outcome,
                metadata.get("user_api_key_alias"),
                metadata.get("user_api_key_hash"),
                payload.get("model_group"),
                payload.get("model"),
                payload.get("response_cost"),
            )
        )

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._logged("success", kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._logged("failure", kwargs)

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: UserAPIKeyAuth,
        traceback_str: str | None = None,
    ) -> None:
        self._add(
            Call(
                "denied",
                user_api_key_dict.key_alias,
                user_api_key_dict.api_key,
                None,
                str(request_data.get("model")),
            )
        )


recorder = Recorder()


async def auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    if api_key not in KEYS:
        raise HTTPException(status_code=401, detail="invalid api key")
    alias, models = KEYS[api_key]
    return UserAPIKeyAuth(api_key=api_key, key_alias=alias, models=models)


@dataclass
class InterceptorSpy:
    verdicts: list[bool] = field(default_factory=list)
    """Every ``can_handle`` answer: True would mean LiteLLM runs its own advisor loop."""
    handled: list[str] = field(default_factory=list)
    """The model of every request it was handed (the handler then fails the request)."""


def spy_on_interceptor(monkeypatch: pytest.MonkeyPatch) -> InterceptorSpy:
    spy = InterceptorSpy()
    can_handle = AdvisorOrchestrationHandler.can_handle

    def spy_can_handle(self: Any, tools: Any, custom_llm_provider: Any) -> bool:
        verdict = bool(can_handle(self, tools, custom_llm_provider))
        spy.verdicts.append(verdict)
        return verdict

    async def spy_handle(self: Any, **kwargs: Any) -> Any:
        spy.handled.append(str(kwargs.get("model")))
        raise RuntimeError("LiteLLM's advisor interceptor took over a request")

    monkeypatch.setattr(AdvisorOrchestrationHandler, "can_handle", spy_can_handle)
    monkeypatch.setattr(AdvisorOrchestrationHandler, "handle", spy_handle)
    return spy
