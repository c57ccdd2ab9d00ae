"""Issue 8 through the agents and magics: add_base_tools, the names people already use, `%agent mcp`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook
from scripted_server import Reply, ScriptedServer, tool_calls
from web_site import PAGES, WebSite

from agent_kernel.agents import CodeAgent, ToolCallingAgent
from agent_kernel.tools import tool

MCP_SERVER = Path(__file__).with_name("mcp_server.py")


def _fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_public_names() -> None:
    import agent_kernel
    from agent_kernel import tools

    from agent_kernel import base_tools

    assert agent_kernel.mcp_tools.__module__ == "agent_kernel.mcp"
    assert base_tools.WebSearchTool is agent_kernel.WebSearchTool
    assert base_tools.VisitWebpageTool.__module__ == agent_kernel.PythonInterpreterTool.__module__ == "agent_kernel.base_tools"
    with pytest.raises(AttributeError):  # tools.py is the Tool machinery only; the base tools build on it
        tools.WebSearchTool  # noqa: B018


def test_code_agent_add_base_tools_fibonacci_118(scripted_server: Any) -> None:
    code = "a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nfinal_answer(a)"
    scripted_server.script([Reply(text=f"```python\n{code}\n```")])
    with CodeAgent(scripted_server.model(), add_base_tools=True) as agent:
        assert list(agent.tools) == ["web_search", "visit_webpage"]
        run = agent.run("What is the 118th Fibonacci number?")
    assert run.state == "success", run.error
    assert type(run.output) is int and run.output == _fibonacci(118)
    assert "def visit_webpage(url: str) -> str:" in scripted_server.requests[0]["messages"][0]["content"]


def _interpreter_user(body: dict[str, Any]) -> Reply:
    seen = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
    if not seen:
        return tool_calls([("python_interpreter", {"code": "2 ** 100"})])
    return tool_calls([("final_answer", {"answer": seen[-1]})])


def test_tool_calling_agent_add_base_tools_and_close(scripted_server: Any) -> None:
    @tool
    def web_search(query: str) -> str:
        """My own search.

        Args:
            query: what to find.
        """
        return "mine"

    scripted_server.script(_interpreter_user)
    agent = ToolCallingAgent(scripted_server.model(), tools=[web_search], add_base_tools=True)
    assert list(agent.tools) == ["web_search", "visit_webpage", "python_interpreter"]
    assert agent.tools["web_search"] is web_search  # the user's own tool of that name wins
    with agent:
        run = agent.run("2 to the 100th?")
        interpreter = agent.tools["python_interpreter"]
        assert interpreter._sandbox is not None
    assert interpreter._sandbox is None  # closing the agent stopped the sandbox it made
    assert run.output == f"Out: {2 ** 100}"


def test_additional_authorized_imports_with_network_fetches_a_page(scripted_server: Any) -> None:
    with WebSite() as site:
        code = (f"import requests\nfrom bs4 import BeautifulSoup\nhtml = requests.get('{site.url}/article', timeout=10).text\n"
                "final_answer(BeautifulSoup(html, 'html.parser').title.get_text())")
        scripted_server.script([Reply(text=f"```python\n{code}\n```")])
        with CodeAgent(scripted_server.model(), additional_authorized_imports=["requests", "bs4"],
                       network=True) as agent:
            assert agent.imports == ("requests", "bs4")
            run = agent.run("Fetch the article page and read its title")
    assert run.state == "success", run.error
    assert run.output == PAGES["/article"][0]


def test_executor_type_and_alias_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTER_GATEWAY_URL", raising=False)
    assert CodeAgent("openai/unused", executor_type="local").imports == ()
    with pytest.raises(ValueError, match="unknown executor_type 'e2b'.*'local'.*'gateway'.*container platform"):
        CodeAgent("openai/unused", executor_type="e2b")
    with pytest.raises(ValueError, match="executor_type='gateway' needs the gateway's URL"):
        CodeAgent("openai/unused", executor_type="gateway")
    gateway = CodeAgent("openai/unused", executor_type="gateway", gateway="http://127.0.0.1:9", token="t")
    assert gateway._sandbox_options == {"gateway": "http://127.0.0.1:9", "token": "t"}
    with pytest.raises(TypeError, match="not both"):
        CodeAgent("openai/unused", imports=["os"], additional_authorized_imports=["sys"])


def test_magics_mcp_and_base_tools(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([tool_calls([("add", {"a": 40, "b": 2})]), tool_calls([("final_answer", {"answer": 42})])],
                      key="Add forty")
        code = "final_answer([get_metric(metric='churn', week=w)['value'] for w in (1, 2)])"
        server.script([Reply(text=f"```python\n{code}\n```")], key="Churn by week")
        setup = ("import os\nos.environ['OPENAI_API_KEY'] = 'sk-scripted'\n"
                 "os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] = 'True'\n%load_ext agent_kernel\n"
                 f"%config AgentMagics.model = 'openai/scripted'\n%config AgentMagics.api_base = {server.url!r}")
        cells = [setup,
                 f"%agent mcp add metrics -- {sys.executable} {MCP_SERVER}",
                 "%%agent tools --tools metrics.add --out total --base-tools\nAdd forty and two",
                 "print(total)",
                 "%%agent code --tools metrics --out churn\nChurn by week",
                 "print(churn)",
                 "%agent mcp list",
                 "%agent mcp remove metrics",
                 "%agent mcp list"]
        nb = new_notebook(cells=[new_code_cell(c) for c in cells])
        NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in nb.cells]
    errors = [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert out[1].startswith("metrics: 8 tools: add, get_metric")
    assert out[3].strip() == "42"
    assert out[5].strip() == "[40.0, 31.0]"
    assert out[6].startswith("metrics (") and "connected" in out[6]
    assert "no MCP servers" in out[8]
    tools_sent = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert tools_sent == {"add", "web_search", "visit_webpage", "python_interpreter", "final_answer"}
