"""``advisor-middleware serve``: run the middleware under uvicorn.

Usage errors are one line naming the argument and what is wrong, with exit status 2; the banner
is printed once the server listens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import uvicorn
from uvicorn.supervisors import Multiprocess

from . import __version__

__all__ = ["app_from_env", "build_app", "main"]

_ENV = "ADVISOR_MIDDLEWARE_SERVE"

_TRY = """\
advisor-middleware demo gateway on http://{host}:{port}  (scripted executor and advisor, offline)

Try it with curl:
  curl -sN http://{host}:{port}/v1/messages -H 'content-type: application/json' -d '{{
    "model": "demo-executor", "max_tokens": 1024, "stream": true,
    "messages": [{{"role": "user", "content": "Plan a birthday party"}}],
    "tools": [{{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}}]}}'

Or with Claude Code (npm install -g @anthropic-ai/claude-code@{claude_code}):
  ANTHROPIC_BASE_URL=http://{host}:{port} ANTHROPIC_API_KEY=sk-demo \\
    CLAUDE_CODE_ENABLE_EXPERIMENTAL_ADVISOR_TOOL=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \\
    claude --model sonnet --advisor opus -p "Consult the advisor, then run: echo hello"
"""

CLAUDE_CODE = "2.1.332"
"""The Claude Code version the banner and the README suggest (the one the test suite pins)."""

_PROXY = """\
advisor-middleware proxy on http://{host}:{port}  ->  {upstream}
Every request is forwarded to the upstream gateway; requests with the advisor tool are run as
executor and advisor legs there, with the caller's own headers. Point clients at
ANTHROPIC_BASE_URL=http://{host}:{port}
"""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (which argument, what is wrong) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message.rstrip('.')} (see --help)", file=sys.stderr, flush=True)
    raise SystemExit(2)


def http_url(value: str) -> str:
    """An argparse ``type``: an http:// or https:// base URL the proxy and the router accept."""
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    from .routers.http import parse_base_url

    try:
        parse_base_url(value)  # the check the proxy and the router make, as a usage error
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


class _Number:
    """An argparse ``type``: a finite ``kind`` for which ``valid`` holds, else a usage error
    saying the value is not ``what``."""

    def __init__(self, kind: type[int] | type[float], what: str, valid: Callable[[float], bool]) -> None:
        self.kind, self.what, self.valid = kind, what, valid

    def __call__(self, value: str) -> Any:
        try:
            number = self.kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or not self.valid(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {self.what}")
        return number


_PORT = _Number(int, "a port number (1-65535)", lambda n: 1 <= n <= 65535)
_COUNT = _Number(int, "a whole number of at least 1", lambda n: n >= 1)
_SECONDS = _Number(float, "a number of seconds (0 or more)", lambda n: n >= 0)
SECONDS_ABOVE_ZERO = _Number(float, "a number of seconds above 0", lambda n: n > 0)


def _app(value: str) -> str:
    module, _, attribute = value.partition(":")
    if not module or not attribute:
        raise argparse.ArgumentTypeError(f"{value!r} is not module:attribute (e.g. mypkg.asgi:app)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="advisor-middleware",
        description="Give any /v1/messages gateway Anthropic's advisor tool (advisor_20260301).",
        epilog="Run 'advisor-middleware serve --help' for the options of serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    _serve_options(serve)
    from .check import add_check_command

    add_check_command(commands)
    return parser


def _serve_options(serve: argparse.ArgumentParser) -> None:
    target = serve.add_argument_group("what to serve (APP and --upstream are mutually exclusive)")
    exclusive = target.add_mutually_exclusive_group()
    exclusive.add_argument("app", nargs="?", metavar="APP", type=_app, help="ASGI app to wrap, as module:attribute")
    exclusive.add_argument(
        "--upstream",
        metavar="URL",
        type=http_url,
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
        type=SECONDS_ABOVE_ZERO,
        default=600.0,
        metavar="SECONDS",
        help="--upstream only: longest wait for the next bytes of an answer (default: %(default)s)",
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    server.add_argument("--port", type=_PORT, default=8080, help="port (default: %(default)s)")
    server.add_argument("--workers", type=_COUNT, default=1, help="uvicorn worker processes (default: %(default)s)")
    server.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default: %(default)s)",
    )
    middleware = serve.add_argument_group("middleware")
    middleware.add_argument(
        "--config",
        metavar="FILE",
        help="the middleware's options and advisor profiles, from a TOML file (docs/operators.md)",
    )
    middleware.add_argument(
        "--ping-interval",
        type=SECONDS_ABOVE_ZERO,
        default=None,
        metavar="SECONDS",
        help="send a ping on a stream quiet this long (default: 10, the demo: 2)",
    )
    middleware.add_argument(
        "--advisor-caching",
        choices=["5m", "1h"],
        default=None,
        help="cache the advisor's prompt at this TTL whatever the client sent (default: the tool's caching)",
    )
    middleware.add_argument(
        "--demo-delay",
        type=_SECONDS,
        default=0.04,
        metavar="SECONDS",
        help="demo gateway only: pause between streamed text pieces (default: %(default)s)",
    )


def build_app(
    app_path: str | None,
    *,
    upstream: str | None = None,
    upstream_timeout: float = 600.0,
    demo_delay: float = 0.04,
    ping_interval: float | None = None,
    config: str | None = None,
    advisor_caching: str | None = None,
) -> Any:
    """The app ``serve`` runs: ``AdvisorMiddleware`` around the demo, ``app_path``, or a proxy,
    with the options of the ``config`` file."""
    from .middleware import AdvisorMiddleware
    from .settings_file import load_config

    options: dict[str, Any] = dict(load_config(config)) if config is not None else {}
    if advisor_caching is not None:
        options["advisor_caching"] = advisor_caching
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


SERVE = "advisor-middleware serve"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from .check import check_main

        return check_main(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    if not os.path.isdir(args.app_dir):
        _usage_error(SERVE, f"argument --app-dir: {args.app_dir!r} is not a directory")
    sys.path.insert(0, os.path.abspath(args.app_dir))
    if args.app is not None:
        _check_importable(args.app)
    if args.config is not None:
        _check_config(args.config)
    if args.upstream is not None:
        _warn_if_silent(args.upstream)
    options = {
        "app_path": args.app,
        "upstream": args.upstream,
        "upstream_timeout": args.upstream_timeout,
        "demo_delay": args.demo_delay,
        "ping_interval": args.ping_interval,
        "config": args.config,
        "advisor_caching": args.advisor_caching,
    }
    return _serve(args, options)


def _check_importable(app_path: str) -> None:
    """Imports APP once, turning a missing module or attribute into a usage error."""
    from uvicorn.importer import ImportFromStringError, import_from_string

    module = app_path.partition(":")[0]
    try:
        import_from_string(app_path)
    except ImportFromStringError as exc:
        _usage_error(SERVE, f"argument APP: {exc}")
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the app's own import failed: its traceback says where
        _usage_error(SERVE, f"argument APP: no module named {exc.name!r} (looked in --app-dir and sys.path)")


def _check_config(path: str) -> None:
    """Loads the config file once, turning what is wrong with it into a usage error."""
    from .settings_file import ConfigFileError, load_config

    try:
        load_config(path)
    except ConfigFileError as exc:
        _usage_error(SERVE, f"argument --config: {exc}")


def _warn_if_silent(upstream: str) -> None:
    """Warns (once, at start-up) when the upstream gateway does not answer HTTP at all."""
    import httpx

    try:
        httpx.get(upstream, timeout=5.0)  # any answer, even a 404, means it is there
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        print(
            f"advisor-middleware: warning: --upstream {upstream} does not answer ({reason}); "
            "serving anyway: requests get 502 until it does",
            file=sys.stderr,
            flush=True,
        )


def _serve(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Runs uvicorn in this process or, with ``--workers N``, in N worker processes."""
    common = {"host": args.host, "port": args.port, "log_level": args.log_level}
    try:
        if args.workers == 1:
            server = _BannerServer(uvicorn.Config(build_app(**options), **common), args)
            server.run()
            return 0 if server.started else 1
        # Worker processes import the app themselves: hand them the options through the env.
        os.environ[_ENV] = json.dumps(options)
        config = uvicorn.Config("advisor_middleware.cli:app_from_env", factory=True, workers=args.workers, **common)
        sock = config.bind_socket()
        sock.listen(config.backlog)
        _print_banner(args, sock)
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass  # Ctrl+C once the server has shut down
    return 0


def _print_banner(args: argparse.Namespace, sock: socket.socket) -> None:
    host, port = args.host, sock.getsockname()[1]
    if args.upstream is not None:
        print(_PROXY.format(host=host, port=port, upstream=args.upstream), file=sys.stderr, flush=True)
    elif args.app is None:
        print(_TRY.format(host=host, port=port, claude_code=CLAUDE_CODE), file=sys.stderr, flush=True)


class _BannerServer(uvicorn.Server):
    """A uvicorn server that prints the banner once it listens."""

    def __init__(self, config: uvicorn.Config, args: argparse.Namespace) -> None:
        super().__init__(config)
        self.args = args

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _print_banner(self.args, self.servers[0].sockets[0])


def app_from_env() -> Any:
    """The app ``serve --workers N`` gives each worker process."""
    return build_app(**json.loads(os.environ[_ENV]))
