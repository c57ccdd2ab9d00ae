"""MCP tools against a real MCP server (tests/mcp_server.py, mcp 2.x MCPServer), over stdio and over
streamable HTTP on 127.0.0.1, used directly and by both agents (scripted model server)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_server import METRICS, SECRET_ENV
from scripted_server import Reply, tool_calls

from agent_kernel.mcp import MCPConnection, MCPConnectionError, MCPToolError, mcp_tools

SERVER = [sys.executable, str(Path(__file__).with_name("mcp_server.py"))]
SECRET = "mcp-secret-value-5e1d"
TOKEN = "http-token-9c2a"


@pytest.fixture(scope="module")
def stdio_server() -> Iterator[MCPConnection]:
    connection = mcp_tools(SERVER, env={SECRET_ENV: SECRET})
    connection.start()
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    process = subprocess.Popen([*SERVER, "--http", "--token", TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def http_server(http_url: str) -> Iterator[MCPConnection]:
    connection = mcp_tools(http_url, headers={"Authorization": f"Bearer {TOKEN}"})
    connection.start()
    yield connection
    connection.close()


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest) -> MCPConnection:
    return request.getfixturevalue(f"{request.param}_server")


def test_tools_come_with_their_schemas(server: MCPConnection) -> None:
    names = [t.name for t in server.tools]
    assert names == ["add", "get_metric", "shout", "word_count", "fail", "crash", "slow", "has_secret"]
    add = server.tool("add")
    assert add.parameters["properties"]["a"]["type"] == "integer" and add.parameters["required"] == ["a", "b"]
    assert add.python_signature().startswith("def add(a: int, b: int) -> int:")
    word_count = server.tool("word-count")  # the server's name, not a Python identifier, maps to one
    assert word_count.name == "word_count" and word_count.remote_name == "word-count"
    assert server.tool("shout").output_type == "str"
    with pytest.raises(KeyError, match="has no tool 'nope'; it has: add, get_metric"):
        server.tool("nope")


def test_structured_and_text_results(server: MCPConnection) -> None:
    assert server.tool("add")(a=2, b=40) == 42  # {"result": 42} unwrapped to the value
    assert server.tool("add")(2, b=40) == 42  # by position, in the schema's order
    with pytest.raises(TypeError, match="two values for argument 'a'"):
        server.tool("add")(2, a=40)
    assert server.tool("get_metric")(metric="churn", week=2) == {"metric": "churn", "week": 2, "value": 31.0}
    assert server.tool("shout")(text="hi") == "HI!"  # text content
    assert server.tool("word_count")(text="one two three") == 3
    with pytest.raises(MCPToolError, match="only on Tuesdays"):
        server.tool("fail")(reason="only on Tuesdays")


def test_credentials_reach_the_stdio_server_only(stdio_server: MCPConnection, http_url: str) -> None:
    assert stdio_server.tool("has_secret")() is True
    with pytest.raises(ValueError, match="env= is for stdio servers"):
        mcp_tools(http_url, env={SECRET_ENV: SECRET})
    with pytest.raises(ValueError, match="headers= is for HTTP servers"):
        mcp_tools(SERVER, headers={"Authorization": "x"})
    with pytest.raises(ValueError, match=r"command list for a stdio server \(\['python', 'server.py'\]\)"):
        mcp_tools("server.py")


def test_http_headers_are_sent(http_url: str) -> None:
    with pytest.raises(MCPConnectionError, match=f"could not connect to the MCP server {re.escape(http_url)}"):
        mcp_tools(http_url, connect_timeout=20).start()
    with mcp_tools(http_url, headers={"Authorization": f"Bearer {TOKEN}"}) as tools:
        assert len(tools) == 8


def test_a_server_that_fails_to_start_shows_its_log() -> None:
    broken = [sys.executable, "-c", "import sys; print('missing config file x.toml', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(MCPConnectionError, match="(?s)could not connect.*log ends with:\nmissing config file x.toml"):
        mcp_tools(broken).start()
    with pytest.raises(MCPConnectionError, match="No such file or directory"):
        mcp_tools(["/nonexistent/mcp-server"]).start()


def test_slow_call_times_out(stdio_server: MCPConnection) -> None:
    with mcp_tools(SERVER, timeout=0.5) as tools:
        slow = next(t for t in tools if t.name == "slow")
        started = time.monotonic()
        with pytest.raises(MCPToolError, match="did not answer within 0.5 s"):
            slow(seconds=1.5)
        assert time.monotonic() - started < 1.4
        assert slow(seconds=0.01) == "waited 0.01s"  # the session is still usable


def test_usable_from_another_event_loop() -> None:
    """`async with` in the user's own loop (asyncio.run); the session still lives on one loop."""

    async def main() -> list[Any]:
        async with mcp_tools(SERVER) as tools:
            add = next(t for t in tools if t.name == "add")
            return await asyncio.gather(*(add.acall(a=i, b=1) for i in range(4)))

    assert asyncio.run(main()) == [1, 2, 3, 4]


# -- agents ---------------------------------------------------------------------------------------


def _tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]


def _adder(body: dict[str, Any]) -> Reply:
    seen = _tool_results(body)
    if not seen:
        return tool_calls([("add", {"a": 19, "b": 23}), ("shout", {"text": "done"})])
    return tool_calls([("final_answer", {"answer": f"{seen[0]} {seen[1]}"})])


def test_tool_calling_agent_calls_mcp_tools(server: MCPConnection, scripted_server: Any) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script(_adder)
    run = ToolCallingAgent(scripted_server.model(), tools=server.tools).run("add 19 and 23, then shout done")
    assert run.state == "success", run.error
    assert run.output == "42 DONE!"
    sent = {t["function"]["name"]: t["function"] for t in scripted_server.requests[0]["tools"]}
    assert sent["get_metric"]["parameters"]["required"] == ["metric", "week"]


_WOW_CODE = """\
import os
changes = {}
for metric in ["signups", "revenue", "churn"]:
    before = get_metric(metric=metric, week=1)["value"]
    after = get_metric(metric=metric, week=2)["value"]
    changes[metric] = round((after - before) / before * 100, 1)
flagged = sorted(m for m, pct in changes.items() if abs(pct) > 10)
final_answer({"changes": changes, "flagged": flagged, "secret": os.environ.get("SECRET_ENV")})
""".replace("SECRET_ENV", SECRET_ENV)


def test_code_agent_calls_an_mcp_tool_in_a_loop(server: MCPConnection, scripted_server: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Pull three metrics, compute the week-over-week change, flag moves over 10%: in sandbox code,
    over the host bridge. The secret is set in this process too, and still absent from the sandbox."""
    from agent_kernel.agents import CodeAgent

    monkeypatch.setenv(SECRET_ENV, SECRET)
    scripted_server.script([Reply(text=f"Thought: loop over the metrics.\n```python\n{_WOW_CODE}```")])
    with CodeAgent(scripted_server.model(), tools=server.tools, imports=["os"]) as agent:
        run = agent.run("Pull three metrics, compute the week-over-week change, flag moves over 10%")
    assert run.state == "success", run.error
    expected = {m: round((w[2] - w[1]) / w[1] * 100, 1) for m, w in METRICS.items()}
    assert run.output == {"changes": expected, "flagged": ["churn", "signups"], "secret": None}
    prompt = scripted_server.requests[0]["messages"][0]["content"]
    assert "def get_metric(metric: str, week: int) -> dict:" in prompt


def _crasher(body: dict[str, Any]) -> Reply:
    seen = _tool_results(body)
    if not seen:
        return tool_calls([("crash", {})])
    if len(seen) == 1:
        return tool_calls([("add", {"a": 1, "b": 1})])
    return tool_calls([("final_answer", {"answer": seen})])


def test_a_server_dying_mid_run_is_a_clear_error_not_a_hang(scripted_server: Any) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script(_crasher)
    with mcp_tools(SERVER) as tools:
        started = time.monotonic()
        run = ToolCallingAgent(scripted_server.model(), tools=tools).run("crash the server")
        assert time.monotonic() - started < 20
    assert run.state == "success", run.error
    crashed, after = run.output
    for observed in (crashed, after):
        assert observed.startswith("Error: MCPConnectionError: the MCP server behind tool")
        assert "is not running any more" in observed


# -- the registry behind `%agent mcp ...` -----------------------------------------------------------


def test_named_servers_for_the_magics(http_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_kernel.mcp import MCPServers

    monkeypatch.setenv("AK_TEST_MCP_SECRET", SECRET)
    monkeypatch.setenv("AK_TEST_MCP_TOKEN", TOKEN)
    servers = MCPServers()
    try:
        said = servers.command(["add", "local", "--env", f"{SECRET_ENV}=$AK_TEST_MCP_SECRET", "--", *SERVER])
        assert said.startswith("local: 8 tools: add, get_metric")
        servers.command(["add", "remote", http_url, "--header", "Authorization: Bearer $AK_TEST_MCP_TOKEN"])
        assert servers.resolve("local.has_secret")[0]() is True  # the $VAR value came from the environment
        assert [t.name for t in servers.resolve("remote")] == [t.name for t in servers.resolve("local")]
        assert servers.resolve("remote.word-count")[0](text="a b") == 2
        assert servers.resolve("notaserver") is None
        with pytest.raises(KeyError, match="has no tool 'nope'"):
            servers.resolve("local.nope")
        assert "local (" in servers.listing() and "remote (" in servers.listing()
        servers.command(["remove", "remote"])
        assert list(servers.connections) == ["local"]
        for bad, problem in ((["add", "x"], "give a URL, or -- and the server's command"),
                             (["add", "x", "--"], "give the server's command after --"),
                             (["add", "bad-name", "--", "python"], "must be a Python name"),
                             (["add", "x", "--env", "NOT_SET_ANYWHERE_42", "--", "python"],
                              "NOT_SET_ANYWHERE_42 is not set"),
                             (["add", "x", http_url, "--header", "no-colon"], "expected KEY:VALUE"),
                             (["remove", "ghost"], "no MCP server named 'ghost'"),
                             (["frobnicate"], "usage:")):
            with pytest.raises(ValueError, match=re.escape(problem)):
                servers.command(bad)
    finally:
        servers.close()
    assert servers.connections == {}
