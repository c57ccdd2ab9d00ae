"""Tools from MCP servers, through the official `mcp` package.

    with mcp_tools(["python", "server.py"], env={"API_TOKEN": token}) as tools:
        run = CodeAgent(model, tools=tools).run("...")

The connection (a subprocess over stdio, or streamable HTTP) lives in this process, on
agent_kernel's background loop, and each MCP tool becomes a `Tool` that calls through it. A
CodeAgent's sandbox calls those tools over the host bridge, so the MCP session and its
credentials (`env=`, `headers=`) never enter the sandbox. A stdio server gets only a minimal
environment (PATH, HOME, ...) plus `env=`, not this process's secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import _aio
from .errors import AgentKernelError
from .tools import Tool, ToolError, check_definition, schema_type_text, schema_types

if TYPE_CHECKING:
    import mcp_types

__all__ = ["MCP_USAGE", "MCPConnection", "MCPConnectionError", "MCPServers", "MCPTool", "MCPToolError", "mcp_tools"]

T = TypeVar("T")
_STDERR_TAIL = 2000  # characters of a failed server's log shown to the user


class MCPConnectionError(AgentKernelError, RuntimeError):
    """The MCP server could not be started or reached, or it went away."""


class MCPToolError(ToolError):
    """The MCP tool itself reported an error; the message is the server's."""


def mcp_tools(server: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
              headers: Mapping[str, str] | None = None, timeout: float = 60.0,
              connect_timeout: float = 60.0) -> MCPConnection:
    """Connect to an MCP server; use as `with mcp_tools(...) as tools:` (or `async with`).

    `server` is a command list for a stdio server (`["npx", "-y", "some-server"]`; `env=` adds
    variables for it) or an `http(s)://.../mcp` URL for a streamable-HTTP server (`headers=` adds
    request headers, e.g. an Authorization token). `timeout` bounds each tool call, in seconds.
    """
    return MCPConnection(server, env=env, headers=headers, timeout=timeout, connect_timeout=connect_timeout)


class MCPTool(Tool):
    """One tool of an MCP server: its name (made a Python identifier), description and input schema."""

    _abstract = True

    def __init__(self, connection: MCPConnection, spec: mcp_types.Tool) -> None:
        self.connection = connection
        self.remote_name = spec.name
        self.name = _identifier(spec.name)
        self.description = (spec.description or spec.title or spec.name).strip()
        self.parameters = {"type": "object", "properties": {}, **(spec.input_schema or {})}
        self._signature_types = schema_types(self.parameters)
        output = spec.output_schema or {}
        # MCP servers wrap a non-object return value as {"result": value}; callers want the value.
        self._unwraps = set(output.get("properties", {})) == {"result"}
        if self._unwraps:
            self.output_type = schema_type_text(output["properties"]["result"])
        else:
            self.output_type = "dict" if output else "str"
        check_definition(self.name, self.description, self.parameters,
                          where=f"MCP tool {spec.name!r} of {connection.label}")

    async def forward(self, *args: Any, **arguments: Any) -> Any:
        """Sandbox code may pass arguments by position too: they take the schema's order."""
        names = list((self.parameters or {}).get("properties", {}))
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes at most {len(names)} arguments ({', '.join(names)}), "
                            f"{len(args)} given")
        for name, value in zip(names, args):
            if name in arguments:
                raise TypeError(f"{self.name}() got two values for argument {name!r}")
            arguments[name] = value
        result = await self.connection._call(self.remote_name, arguments)
        return self._value(result)

    def _value(self, result: mcp_types.CallToolResult) -> Any:
        """Structured content when the server gives it, else the text; an error result raises."""
        texts = [block.text for block in result.content if block.type == "text"]
        notes = [f"[{block.type} {getattr(block, 'mime_type', '') or ''}]".replace(" ]", "]")
                 for block in result.content if block.type != "text"]
        if result.is_error:
            raise MCPToolError("\n".join(texts) or f"the MCP tool {self.remote_name!r} failed without saying why")
        structured = result.structured_content
        if structured is not None:
            return structured["result"] if self._unwraps and set(structured) == {"result"} else structured
        return "\n".join([*texts, *notes])


def _identifier(name: str) -> str:
    """MCP names may hold '-', '.' or '/'; a CodeAgent calls tools as Python functions."""
    ident = re.sub(r"\W", "_", name)
    return f"tool_{ident}" if not ident or ident[0].isdigit() else ident


class MCPConnection:
    """A live connection to one MCP server and the Tools it offers (after `start()`).

    The session runs in one task on agent_kernel's background loop (the mcp client's task groups
    must be entered and left by the same task); tool calls from any thread or loop are sent there.
    """

    def __init__(self, server: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0,
                 connect_timeout: float = 60.0) -> None:
        if isinstance(server, str):
            if not re.match(r"https?://", server, re.IGNORECASE):
                raise ValueError(f"MCP server {server!r}: give a command list for a stdio server "
                                 "(['python', 'server.py']) or an http(s)://.../mcp URL")
            if env:
                raise ValueError("env= is for stdio servers (a command list); an HTTP server takes headers=")
            self.label = re.sub(r"//[^/@]*@", "//", server).split("?")[0]  # no credentials in messages
        else:
            server = [str(part) for part in server]
            if not server:
                raise ValueError("the MCP server command is empty; give e.g. ['python', 'server.py']")
            if headers:
                raise ValueError("headers= is for HTTP servers (a URL); a stdio server takes env=")
            self.label = " ".join(server) if len(" ".join(server)) <= 80 else " ".join(server)[:77] + "..."
        import mcp  # noqa: F401 - fail now, with the fix, when the extra is missing

        self.server = server
        self._env = dict(env or {})
        self._headers = dict(headers or {})
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.tools: list[MCPTool] = []
        self._client: Any = None
        self._owner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._errlog: Any = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<MCPConnection {self.label!r} {state}, {len(self.tools)} tools>"

    @property
    def connected(self) -> bool:
        return self._owner is not None and not self._owner.done()

    def tool(self, name: str) -> MCPTool:
        """One tool by its name (as the server spells it, or as the Python identifier)."""
        for t in self.tools:
            if name in (t.name, t.remote_name):
                return t
        raise KeyError(f"the MCP server {self.label} has no tool {name!r}; it has: "
                       f"{', '.join(t.name for t in self.tools) or 'none'}")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> list[MCPTool]:
        return _aio.run_sync(self.astart())

    async def astart(self) -> list[MCPTool]:
        return await _on_background_loop(self._open())

    def close(self) -> None:
        _aio.run_sync(self.aclose())

    async def aclose(self) -> None:
        await _on_background_loop(self._shutdown())

    def __enter__(self) -> list[MCPTool]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> list[MCPTool]:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _open(self) -> list[MCPTool]:
        if self.connected:
            return self.tools
        self._failure = None
        self._stop = asyncio.Event()
        if not isinstance(self.server, str):  # the server's stderr, kept for start errors
            self._errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in _shutdown
        ready: asyncio.Future[list[mcp_types.Tool]] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.ensure_future(self._serve(ready))
        try:
            specs = await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout)
        except asyncio.TimeoutError:
            await self._shutdown()
            raise MCPConnectionError(f"the MCP server {self.label} did not answer within {self.connect_timeout:g} s"
                                     f"{self._log_tail()}") from None
        except MCPConnectionError:
            await self._shutdown()
            raise
        tools = [MCPTool(self, spec) for spec in specs]
        names = [t.name for t in tools]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            await self._shutdown()
            raise MCPConnectionError(f"the MCP server {self.label} has tools whose names clash as Python "
                                     f"identifiers: {', '.join(clashes)}")
        self.tools = tools
        return tools

    async def _serve(self, ready: asyncio.Future[list[mcp_types.Tool]]) -> None:
        """The task that owns the session: connect, list the tools, wait for close."""
        from mcp import Client

        assert self._stop is not None
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(stack)
                client = await stack.enter_async_context(Client(transport, read_timeout_seconds=self.timeout))
                ready.set_result(await _list_all(client))
                self._client = client
                await self._stop.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - an exception group from the client's task groups, OSError, ...
            if not ready.done():
                ready.set_exception(MCPConnectionError(
                    f"could not connect to the MCP server {self.label}: {_summary(exc)}{self._log_tail()}"))
            self._failure = exc
        finally:
            self._client = None
            if not ready.done():
                ready.cancel()

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        if isinstance(self.server, str):
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=self._headers, timeout=httpx2.Timeout(30.0, read=max(self.timeout, 30.0))))
            return streamable_http_client(self.server, http_client=http)
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=self.server[0], args=self.server[1:], env=self._env or None)
        return stdio_client(params, errlog=self._errlog)

    async def _shutdown(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        if self._stop is not None:
            self._stop.set()
        try:
            await asyncio.wait_for(owner, 10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        if self._errlog is not None:
            self._errlog.close()

    def _log_tail(self) -> str:
        """The end of a stdio server's stderr, for the user (start errors only: logs may hold secrets)."""
        if self._errlog is None or self._errlog.closed:
            return ""
        self._errlog.seek(0)
        text = self._errlog.read()[-_STDERR_TAIL:].strip()
        return f"\nThe server's log ends with:\n{text}" if text else ""

    # -- calls -----------------------------------------------------------------------------------

    async def _call(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        return await _on_background_loop(self._send(name, arguments))

    async def _send(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        owner, client = self._owner, self._client
        if owner is None or owner.done() or client is None:
            raise MCPConnectionError(self._gone(name))
        call = asyncio.ensure_future(client.call_tool(name, arguments))
        done, _ = await asyncio.wait({call, owner}, return_when=asyncio.FIRST_COMPLETED)
        if call not in done:  # the session ended under the call: the server is gone
            call.cancel()
            raise MCPConnectionError(self._gone(name))
        try:
            return call.result()
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise MCPConnectionError(self._gone(name)) from None
            if exc.code == REQUEST_TIMEOUT:
                raise MCPToolError(f"the MCP tool {name!r} did not answer within {self.timeout:g} s") from None
            raise MCPToolError(f"the MCP server refused the call to {name!r}: {exc.message}") from None

    def _gone(self, name: str) -> str:
        return (f"the MCP server behind tool {name!r} is not running any more (it exited or the connection "
                "was lost); its tools cannot be used in this run. Continue without them or give your answer.")


async def _list_all(client: Any) -> list[mcp_types.Tool]:
    specs: list[mcp_types.Tool] = []
    cursor = None
    for _ in range(100):  # a paginator that never ends must not hang the start
        page = await client.list_tools(cursor=cursor)
        specs.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return specs


def _summary(exc: BaseException) -> str:
    """The leaf errors of an exception group, which is what anyio task groups raise."""
    children = getattr(exc, "exceptions", None)  # an exception group (a backport's on Python 3.10)
    if isinstance(children, (list, tuple)) and children:
        return "; ".join(dict.fromkeys(_summary(e) for e in children))
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _on_background_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run where the MCP session lives, whichever loop or thread the caller is on."""
    if asyncio.get_running_loop() is _aio.loop():
        return await coro
    return await asyncio.wrap_future(_aio.submit(coro))


MCP_USAGE = """\
%agent mcp add NAME [--env VAR[=VALUE]]... -- COMMAND ARGS...   a stdio server
%agent mcp add NAME URL [--header "Name: value"]...            a streamable-HTTP server
%agent mcp list                                                servers and their tools
%agent mcp remove NAME                                         disconnect
$VAR in a value is read from this kernel's environment (keep secrets out of the notebook);
--env VAR alone passes VAR through. Then `%%agent ... --tools NAME` (all of its tools) or NAME.tool."""


class MCPServers:
    """Named MCP connections for the notebook magics (`%agent mcp ...`, `--tools NAME.tool`)."""

    def __init__(self) -> None:
        self.connections: dict[str, MCPConnection] = {}

    def command(self, words: Sequence[str]) -> str:
        """Carry out `%agent mcp WORDS`; returns what to print. Bad input raises ValueError with the usage."""
        verb, args = (words[0], list(words[1:])) if words else ("list", [])
        if verb == "add" and args:
            return self.add(args[0], args[1:])
        if verb == "remove" and len(args) == 1:
            self.remove(args[0])
            return f"disconnected {args[0]}"
        if verb == "list" and not args:
            return self.listing()
        raise ValueError(f"usage:\n{MCP_USAGE}")

    def add(self, name: str, spec: Sequence[str]) -> str:
        if not name.isidentifier():
            raise ValueError(f"the server name {name!r} must be a Python name (it is used as --tools {name}.tool)")
        connection = _connection_from_words(list(spec))
        if name in self.connections:
            self.remove(name)
        connection.start()
        self.connections[name] = connection
        return f"{name}: {len(connection.tools)} tools: {', '.join(t.name for t in connection.tools)}"

    def remove(self, name: str) -> None:
        connection = self.connections.pop(name, None)
        if connection is None:
            raise ValueError(f"no MCP server named {name!r}; connected: {', '.join(self.connections) or 'none'}")
        connection.close()

    def listing(self) -> str:
        if not self.connections:
            return "no MCP servers; add one with %agent mcp add NAME -- COMMAND ARGS..."
        return "\n".join(f"{name} ({c.label}, {'connected' if c.connected else 'gone'}): "
                         f"{', '.join(t.name for t in c.tools)}" for name, c in self.connections.items())

    def resolve(self, reference: str) -> list[MCPTool] | None:
        """`NAME` -> all of that server's tools, `NAME.tool` -> one; None when NAME is no server."""
        name, _, tool = reference.partition(".")
        connection = self.connections.get(name)
        if connection is None:
            return None
        return [connection.tool(tool)] if tool else list(connection.tools)

    def close(self) -> None:
        for name in list(self.connections):
            self.remove(name)


def _connection_from_words(words: list[str]) -> MCPConnection:
    if "--" in words:
        cut = words.index("--")
        options, command = words[:cut], words[cut + 1 :]
        if not command:
            raise ValueError(f"give the server's command after --\n{MCP_USAGE}")
        env = dict(_pair(value, "=", env_only=True) for value in _flag_values(options, "--env"))
        return mcp_tools(command, env=env)
    if not words or not re.match(r"https?://", words[0], re.IGNORECASE):
        raise ValueError(f"give a URL, or -- and the server's command\n{MCP_USAGE}")
    headers = dict(_pair(value, ":", env_only=False) for value in _flag_values(words[1:], "--header"))
    return mcp_tools(words[0], headers=headers)


def _flag_values(words: list[str], flag: str) -> list[str]:
    if len(words) % 2 or any(w != flag for w in words[::2]):
        raise ValueError(f"unexpected {' '.join(words)!r}; only {flag} options go here\n{MCP_USAGE}")
    return words[1::2]


def _pair(text: str, separator: str, *, env_only: bool) -> tuple[str, str]:
    """`KEY<sep>VALUE` with `$VAR`s read from the environment; `--env VAR` alone passes VAR on."""
    import os

    key, sep, value = (part.strip() for part in text.partition(separator))
    if not sep and env_only:
        value = f"${key}"
    if not key or (not sep and not env_only):
        raise ValueError(f"expected KEY{separator}VALUE, got {text!r}\n{MCP_USAGE}")
    missing = [name for name in re.findall(r"\$([A-Za-z_]\w*)", value) if name not in os.environ]
    if missing:
        raise ValueError(f"{', '.join(missing)} is not set in this kernel's environment")
    return key, re.sub(r"\$([A-Za-z_]\w*)", lambda m: os.environ[m.group(1)], value)
