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

_PROXY = """\
advisor-middleware proxy on http://{host}:{port}  ->  {upstream}
Every request is forwarded to the upstream gateway; requests with the advisor tool are run as
executor and advisor legs there, with the caller's own headers. Point clients at
ANTHROPIC_BASE_URL=http://{host}:{port}
"""


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    from .routers.http import parse_base_url

    try:
        parse_base_url(value)  # the check the proxy and the router make, as a usage error
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advisor-middleware",
        description="Give any /v1/messages gateway Anthropic's advisor tool (advisor_20260301).",
        epilog="Run 'advisor-middleware serve --help' for the options of serve.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the middleware with uvicorn (demo, an ASGI app, or a proxy to a gateway)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve AdvisorMiddleware with uvicorn, in front of one of:\n"
            "  (nothing)        the built-in offline demo gateway (scripted executor and advisor)\n"
            "  APP              your ASGI app, imported like uvicorn does (module:attribute)\n"
            "  --upstream URL   any Anthropic-compatible gateway over HTTP, as a proxy: every request\n"
            "                   is forwarded there, and advisor requests are split into executor and\n"
            "                   advisor legs that are sent there with the caller's own headers"
        ),
        epilog=(
            "examples:\n"
            "  advisor-middleware serve                                  # offline demo on :8080\n"
            "  advisor-middleware serve mygateway.asgi:app --port 9000\n"
            "  advisor-middleware serve --upstream http://127.0.0.1:4000  # e.g. LiteLLM's proxy\n"
            "\n"
            "Clients then use ANTHROPIC_BASE_URL=http://HOST:PORT."
        ),
    )
    target = serve.add_argument_group("what to serve (APP and --upstream are mutually exclusive)")
    exclusive = target.add_mutually_exclusive_group()
    exclusive.add_argument("app", nargs="?", metavar="APP", help="ASGI app to wrap, as module:attribute")
    exclusive.add_argument(
        "--upstream",
        metavar="URL",
        type=_url,
        help="forward everything to this gateway (its base URL, without /v1/messages)",
    )
    target.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory put first on sys.path to import APP from (default: the current directory)",
    )
    target.add_argument(
        "--upstream-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="--upstream only: longest wait for the next bytes of an answer (default: %(default)s)",
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    server.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    server.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: %(default)s)")
    server.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: %(default)s)",
    )
    middleware = serve.add_argument_group("middleware")
    middleware.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="send a ping on a stream quiet this long (default: 10, the demo: 2)",
    )
    middleware.add_argument(
        "--demo-delay",
        type=float,
        default=0.04,
        metavar="SECONDS",
        help="demo gateway only: pause between streamed text pieces (default: %(default)s)",
    )
    return parser


def build_app(
    app_path: str | None,
    *,
    upstream: str | None = None,
    upstream_timeout: float = 600.0,
    demo_delay: float = 0.04,
    ping_interval: float | None = None,
) -> Any:
    """The app ``serve`` runs: ``AdvisorMiddleware`` around the demo, ``app_path``, or a proxy."""
    from .middleware import AdvisorMiddleware

    options: dict[str, Any] = {}
    if ping_interval is not None:
        options["ping_interval"] = ping_interval
    if upstream is not None:
        if app_path is not None:
            raise ValueError("APP and --upstream are mutually exclusive")
        import httpx

        from .proxy import UpstreamProxy
        from .routers.http import HTTPRouter

        # One connection pool for forwarded requests and legs; the proxy closes it at shutdown.
        proxy = UpstreamProxy(upstream, timeout=httpx.Timeout(upstream_timeout, connect=10.0))
        return AdvisorMiddleware(
            proxy, router=HTTPRouter(upstream, client=proxy.client, timeout=proxy.timeout), **options
        )
    if app_path is None:
        from .demo import DemoGateway

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

    sys.path.insert(0, os.path.abspath(args.app_dir))
    options = {
        "app_path": args.app,
        "upstream": args.upstream,
        "upstream_timeout": args.upstream_timeout,
        "demo_delay": args.demo_delay,
        "ping_interval": args.ping_interval,
    }
    if args.upstream is not None:
        print(_PROXY.format(host=args.host, port=args.port, upstream=args.upstream), file=sys.stderr, flush=True)
    elif args.app is None:
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
        uvicorn.run(build_app(**options), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def app_from_env() -> Any:
    """The app ``serve --workers N`` gives each worker process."""
    return build_app(**json.loads(os.environ[_ENV]))
