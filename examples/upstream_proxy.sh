#!/usr/bin/env bash
# advisor-middleware serve --upstream: the advisor tool in front of a gateway you do not change.
#
# Offline, the "gateway" is the demo's scripted Anthropic-compatible host on :4000 (stand-in for
# LiteLLM's proxy, Bifrost, Portkey, a vLLM server speaking Messages...). The proxy on :8080
# forwards every request there; requests with the advisor tool run as executor and advisor legs
# sent there with the caller's own headers. Run from the repository root:
#
#   bash examples/upstream_proxy.sh
#
# Environment: PYTHON (default .venv/bin/python), GATEWAY_PORT (4000), PROXY_PORT (8080),
# DEMO_DELAY (seconds between streamed pieces of the scripted model, 0.04).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
GATEWAY_PORT=${GATEWAY_PORT:-4000}
PROXY_PORT=${PROXY_PORT:-8080}
DEMO_DELAY=${DEMO_DELAY:-0.04}

# 1. The gateway (yours would already be running).
"$PYTHON" -c "
import uvicorn
from advisor_middleware.demo import DemoGateway
delay = float('$DEMO_DELAY')
uvicorn.run(DemoGateway(delay=delay, advisor_delay=delay * 30), port=$GATEWAY_PORT, log_level='warning')
" &
gateway=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/" && break
  sleep 0.1
done
# 2. The advisor proxy in front of it.
"$PYTHON" -m advisor_middleware serve --upstream "http://127.0.0.1:$GATEWAY_PORT" --port "$PROXY_PORT" \
  --log-level warning &
proxy=$!
trap 'kill -INT $proxy $gateway 2>/dev/null; wait' EXIT

for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break
  sleep 0.1
done

# 3. A client that knows nothing of either: the stream has server_tool_use + advisor_tool_result.
curl -sN "http://127.0.0.1:$PROXY_PORT/v1/messages" -H 'content-type: application/json' -H 'x-api-key: sk-demo' -d '{
  "model": "demo-executor", "max_tokens": 1024, "stream": true,
  "messages": [{"role": "user", "content": "Plan a birthday party"}],
  "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}]}'
