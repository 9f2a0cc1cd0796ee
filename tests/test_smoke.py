from __future__ import annotations

import anthropic
import pytest

from .support.helpers import ONE_CONSULT, block_types, call
from .support.upstream import ADVISOR_TOOL, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio


async def test_one_consult_streamed(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(
        Reply([text("Let me ask."), tool_use("advisor")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Do X.")]))
    message = await call(
        client, True, model="exec", max_tokens=1024, messages=[{"role": "user", "content": "hi"}], tools=[ADVISOR_TOOL]
    )
    assert block_types(message.content) == ONE_CONSULT
