"""A real MCP server (mcp 2.x `MCPServer`) for the MCP tests: stdio by default, or streamable HTTP.

    python tests/mcp_server.py                       # stdio
    python tests/mcp_server.py --http [--token T]    # prints http://127.0.0.1:PORT/mcp, then serves

Its tools cover the shapes a client meets: a structured number (`add`), a structured object
(`get_metric`), plain text (`shout`), a name that is not a Python identifier (`word-count`), a
tool error (`fail`), a server that dies mid-call (`crash`), a slow call (`slow`), and a check of its
own environment (`has_secret`: whether MCP_TEST_SECRET reached this process, without showing it).
With --token, HTTP requests must carry `Authorization: Bearer T`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

SECRET_ENV = "MCP_TEST_SECRET"
METRICS = {  # metric -> week -> value
    "signups": {1: 1200.0, 2: 1380.0},
    "revenue": {1: 50_000.0, 2: 51_500.0},
    "churn": {1: 40.0, 2: 31.0},
}

server = MCPServer("agent-kernel-test", instructions="Test tools for agent_kernel.", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers exactly."""
    return a + b


@server.tool()
def get_metric(metric: str, week: int) -> dict[str, Any]:
    """One weekly business metric: signups, revenue or churn, for week 1 or 2."""
    if metric not in METRICS or week not in METRICS[metric]:
        raise ToolError(f"no data for {metric!r} in week {week}; metrics: {', '.join(METRICS)}; weeks: 1, 2")
    return {"metric": metric, "week": week, "value": METRICS[metric][week]}


@server.tool(structured_output=False)
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper() + "!"


@server.tool(name="word-count")
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the given reason."""
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """Kill this server process in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
def slow(seconds: float) -> str:
    """Wait, then answer."""
    time.sleep(seconds)
    return f"waited {seconds}s"


@server.tool()
def has_secret() -> bool:
    """Whether this server process was given its secret (the value is never returned)."""
    return bool(os.environ.get(SECRET_ENV))


def _require_token(app: Any, token: str) -> Any:
    """ASGI middleware: refuse HTTP requests without the bearer token (tests `headers=`)."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
            return
        await app(scope, receive, send)

    return guarded


def _serve_http(token: str | None) -> None:
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue from now on, so the URL can be printed before serving starts
    app = server.streamable_http_app(host="127.0.0.1")
    if token:
        app = _require_token(app, token)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    anyio.run(uvicorn_server.serve, [sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP on 127.0.0.1 instead of stdio")
    parser.add_argument("--token", help="with --http: require this bearer token")
    args = parser.parse_args()
    if args.http:
        _serve_http(args.token)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
