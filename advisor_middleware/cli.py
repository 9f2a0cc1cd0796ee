"""``advisor-middleware serve``: run the middleware under uvicorn."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["app_from_env", "build_app", "main"]

_ENV = "ADVISOR_MIDDLEWARE_SERVE"

_TRY = """\
advisor-middleware demo gateway on http://{host}:{port}  (scripted executor and advisor, offline)

Try it with curl:
  curl -sN http://{host}:{port}/v1/messages -H 'content-type: application/json' -d '{{
    "model": "demo-executor", "max_tokens": 1024, "stream": true,
    "messages": [{{"role": "user", "content": "Plan a birthday party"}}],
    "tools": [{{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}}]}}'

Or with Claude Code (npm install -g @anthropic-ai/claude-code@2.1.331):
  ANTHROPIC_BASE_URL=http://{host}:{port} ANTHROPIC_API_KEY=sk-demo \\
    CLAUDE_CODE_ENABLE_EXPERIMENTAL_ADVISOR_TOOL=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \\
    claude --advisor opus -p "Consult the advisor, then run: echo hello"
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advisor-middleware",
        description="Give any /v1/messages gateway Anthropic's advisor tool (advisor_20260301).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the middleware with uvicorn",
        description=(
            "Serve AdvisorMiddleware with uvicorn. With no APP, it wraps the built-in offline demo "
            "gateway, whose scripted executor consults its scripted advisor."
        ),
    )
    serve.add_argument("app", nargs="?", metavar="APP", help="ASGI app to wrap, as module:attribute (like uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: %(default)s)")
    serve.add_argument("--ping-interval", type=float, default=None, help="seconds between pings on a quiet stream")
    serve.add_argument(
        "--demo-delay",
        type=float,
        default=0.04,
        help="demo gateway only: seconds between streamed text pieces (default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: %(default)s)",
    )
    return parser


def build_app(app_path: str | None, *, demo_delay: float = 0.04, ping_interval: float | None = None) -> Any:
    from .demo import DemoGateway
    from .middleware import AdvisorMiddleware

    options: dict[str, Any] = {}
    if ping_interval is not None:
        options["ping_interval"] = ping_interval
    if app_path is None:
        options.setdefault("ping_interval", 2.0)
        return AdvisorMiddleware(DemoGateway(delay=demo_delay, advisor_delay=max(demo_delay * 30, 0.0)), **options)
    from uvicorn.importer import import_from_string

    return AdvisorMiddleware(import_from_string(app_path), **options)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        _parser().print_help()
        return 2
    import uvicorn

    options = {"app_path": args.app, "demo_delay": args.demo_delay, "ping_interval": args.ping_interval}
    if args.app is None:
        print(_TRY.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    if args.workers > 1:
        # Worker processes import the app themselves: hand them the options through the env.
        os.environ[_ENV] = json.dumps(options)
        uvicorn.run(
            "advisor_middleware.cli:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            workers=args.workers,
        )
    else:
        app = build_app(args.app, demo_delay=args.demo_delay, ping_interval=args.ping_interval)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def app_from_env() -> Any:
    """The app ``serve --workers N`` gives each worker process."""
    options = json.loads(os.environ[_ENV])
    return build_app(options["app_path"], demo_delay=options["demo_delay"], ping_interval=options["ping_interval"])
