"""The offline LiteLLM example of docs/hosts/litellm.md, run as the doc runs it: the demo's scripted
model under uvicorn as the backend of both model groups in ``examples/litellm_proxy.yaml``, and
LiteLLM's proxy app wrapped by ``advisor-middleware serve``."""

from __future__ import annotations

import sys
from pathlib import Path

import anthropic
import pytest

from .support.helpers import ONE_CONSULT, block_types
from .support.servers import ROOT, free_port, server_process, serving

pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:litellm\..*")

EXAMPLE = ROOT / "examples" / "litellm_proxy.yaml"


def test_the_offline_litellm_example_consults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    config = tmp_path / "litellm_proxy.yaml"
    config.write_text(EXAMPLE.read_text().replace("127.0.0.1:4001", f"127.0.0.1:{port}"))
    monkeypatch.setenv("CONFIG_FILE_PATH", str(config))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    backend = [sys.executable, "-m", "uvicorn", "advisor_middleware.demo:DemoGateway", "--factory"]
    backend += ["--port", str(port)]
    with (
        server_process(backend, f"http://127.0.0.1:{port}", log=tmp_path / "backend.log"),
        serving("litellm.proxy.proxy_server:app", log=tmp_path / "serve.log") as (url, _),
        anthropic.Anthropic(base_url=url, api_key="sk-litellm-demo", max_retries=0) as sdk,
    ):
        message = sdk.beta.messages.create(
            model="demo-executor",
            max_tokens=1024,
            messages=[{"role": "user", "content": "Plan a birthday party"}],
            tools=[{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}],
        )
    assert block_types(message.content) == ONE_CONSULT, message.content
    assert "Plan a birthday party" in message.content[2].content.text  # type: ignore[union-attr]
    legs = [line for line in (tmp_path / "backend.log").read_text().splitlines() if "POST /v1/messages" in line]
    assert len(legs) == 3, legs  # executor, advisor, executor: each through LiteLLM to the backend
