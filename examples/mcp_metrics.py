"""A small MCP server with business metrics, for the README's `mcp_tools` example.

    python examples/mcp_metrics.py                                # stdio (mcp_tools starts it for you)
    python examples/mcp_metrics.py --http --token T [--port 8000]  # streamable HTTP on 127.0.0.1

It stands for a metrics service behind an API key: it answers only when METRICS_API_KEY is set in
its environment (any value works for this demo data). A stdio server started by `mcp_tools` gets a
minimal environment, so the key has to be passed with `env=`; it never enters the agent's sandbox.
Over HTTP, requests must carry `Authorization: Bearer T`.
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

KEY_ENV = "METRICS_API_KEY"
METRICS: dict[str, dict[int, float]] = {  # metric -> ISO week -> value
    "signups": {22: 1240.0, 23: 1391.0},
    "revenue": {22: 48200.0, 23: 49650.0},
    "churn_rate": {22: 2.10, 23: 1.82},
}

server = MCPServer("metrics", instructions="Weekly business metrics.", log_level="WARNING")


@server.tool()
def get_metric(name: Literal["signups", "revenue", "churn_rate"], week: int) -> float:
    """The value of a business metric for one ISO week (22 or 23)."""
    if not os.environ.get(KEY_ENV):
        raise ToolError(f"the metrics service needs {KEY_ENV} in this server's environment "
                        f"(mcp_tools(..., env={{'{KEY_ENV}': ...}}))")
    if week not in METRICS[name]:
        raise ToolError(f"no {name} for week {week}; weeks with data: {', '.join(map(str, METRICS[name]))}")
    return METRICS[name][week]


def _require_token(app: Any, token: str) -> Any:
    """ASGI middleware: HTTP requests without the bearer token get 401."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
            return
        await app(scope, receive, send)

    return guarded


def _serve_http(port: int, token: str) -> None:
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)  # connections queue from here on, so the URL is printed before serving starts
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    app = _require_token(server.streamable_http_app(host="127.0.0.1"), token)
    anyio.run(uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).serve, [sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP on 127.0.0.1 instead of stdio")
    parser.add_argument("--port", type=int, default=8000, help="with --http; 0 picks a free port (the URL is printed)")
    parser.add_argument("--token", help="with --http (required there): the bearer token clients must send")
    args = parser.parse_args()
    if not args.http:
        server.run("stdio")
    elif not args.token:
        parser.error("--http needs --token T: an HTTP server on this machine is reachable by every local user")
    else:
        _serve_http(args.port, args.token)


if __name__ == "__main__":
    main()
