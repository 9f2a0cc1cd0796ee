"""What the tests are built from; no tests live here.

- ``upstream``: the scripted model (``Script``, ``Reply``, ``Fail``) behind a real Starlette host.
- ``helpers``: in-process clients, SSE parsing, the stream checker ``check_stream`` (its event
  rules are ``advisor_middleware.check``'s, which ``advisor-middleware check`` uses), ``wait_until``.
- ``servers``: uvicorn and hypercorn in this process, and subprocess servers, on 127.0.0.1.
- ``openai_backend``, ``litellm_config``, ``litellm_support``: a scripted OpenAI-compatible model
  and the configuration and hooks of the LiteLLM proxies under test.
- ``claude_code``, ``cc_host``: the Claude Code harness and the host it talks to.
- ``django_disconnects``: the Django disconnect rounds, run in a process of their own.
- ``soak``: the load and soak runner behind ``tests/test_soak.py``.
"""
