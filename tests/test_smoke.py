from __future__ import annotations

import anthropic
import pytest

from .upstream import ADVISOR_TOOL, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio


async def test_one_consult_streamed(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(
        Reply([text("Let me ask."), tool_use("advisor")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Do X.")]))
    async with client.beta.messages.stream(
        model="exec",
        max_tokens=1024,
        messages=[{"role": "user", "content": "hi"}],
        tools=[ADVISOR_TOOL],  # type: ignore[list-item]
    ) as stream:
        message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "server_tool_use", "advisor_tool_result", "text"]
