"""Base tools: web search engines against a loopback search backend, the page reader and its SSRF
guard against a loopback site, the sandboxed python tool, and both agents using them (litellm's real
client against the scripted server). No traffic leaves 127.0.0.0/8: refused addresses are refused
before any connection is made."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from scripted_server import Reply, tool_calls
from web_site import PAGES, WebSite

from agent_kernel.tools import ToolError
from agent_kernel.base_tools import (
    ALLOW_PRIVATE_URLS_ENV,
    BraveEngine,
    DuckDuckGoEngine,
    PageError,
    PythonInterpreterTool,
    SearchError,
    SerperEngine,
    TavilyEngine,
    URLNotAllowed,
    VisitWebpageTool,
    WebSearchTool,
    _request,
    _Target,
    base_tools,
)

KEYS = {"brave": "brave-key-4f1c", "tavily": "tavily-key-88aa", "serper": "serper-key-0b7e"}


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebSite]:
    monkeypatch.delenv(ALLOW_PRIVATE_URLS_ENV, raising=False)
    with WebSite(keys=KEYS) as s:
        yield s


def _paths(site: WebSite) -> list[str]:
    return [r.path for r in site.requests]


# -- the page reader ------------------------------------------------------------------------------


def test_reads_title_and_text_as_markdown(site: WebSite) -> None:
    out = VisitWebpageTool(allowed_hosts=["127.0.0.1"])(url=f"{site.url}/article")
    assert out.startswith("Title: The Loopback Gazette\n")
    assert f"URL: {site.url}/article" in out
    assert "# Local news" in out and "**home**" in out and "- first item" in out
    assert "script text must not show" not in out and "color: red" not in out


def _must_refuse(tool: VisitWebpageTool, url: str) -> str:
    with pytest.raises(URLNotAllowed) as caught:
        tool(url=url)
    return str(caught.value)


@pytest.mark.parametrize("target", [
    "{site}/article",                       # loopback, by address
    "http://localhost:{port}/article",      # a name resolving to 127.0.0.1
    "http://[::1]:{port}/",                 # IPv6 loopback
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://10.20.30.40/",                  # private
    "http://0.0.0.0:{port}/",               # unspecified (reaches the local host on Linux)
])
def test_ssrf_guard_refuses_non_public_addresses_and_says_how_to_allow(site: WebSite, target: str) -> None:
    url = target.format(site=site.url, port=site.port)
    message = _must_refuse(VisitWebpageTool(), url)
    assert "VisitWebpageTool(allow_private_network=True)" in message
    assert f"{ALLOW_PRIVATE_URLS_ENV}=1" in message
    assert re.search(r"loopback|link-local|private|unspecified", message)
    assert site.requests == []  # refused before connecting


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1/"])
def test_ssrf_guard_refuses_other_schemes(url: str) -> None:
    message = _must_refuse(VisitWebpageTool(allow_private_network=True), url)
    assert "only http and https" in message


@pytest.mark.parametrize("redirect_to", ["http://localhost:{port}/fib", "http://169.254.169.254/latest/meta-data/"])
def test_ssrf_guard_rechecks_every_redirect(site: WebSite, redirect_to: str) -> None:
    """An allowed host redirecting to a private one: the redirect target is refused, never fetched."""
    tool = VisitWebpageTool(allowed_hosts=["127.0.0.1"])
    target = redirect_to.format(port=site.port)
    message = _must_refuse(tool, f"{site.url}/redirect?to={target}")
    assert "allow_private_network=True" in message and httpx.URL(target).host in message
    assert _paths(site) == [f"/redirect?to={target}"]


def test_opt_in_by_argument_and_by_environment(site: WebSite, monkeypatch: pytest.MonkeyPatch) -> None:
    via_redirect = f"{site.url}/redirect?to=http://localhost:{site.port}/fib"
    assert "Title: Fibonacci numbers" in VisitWebpageTool(allow_private_network=True)(url=via_redirect)
    default = VisitWebpageTool()
    monkeypatch.setenv(ALLOW_PRIVATE_URLS_ENV, "1")
    assert "Title: Loopback Home" in default(url=f"http://localhost:{site.port}/")
    # an explicit refusal in code wins over the environment
    _must_refuse(VisitWebpageTool(allow_private_network=False), f"{site.url}/")
    monkeypatch.setenv(ALLOW_PRIVATE_URLS_ENV, "0")
    _must_refuse(default, f"{site.url}/")


def test_request_goes_to_the_checked_address_under_the_hosts_name(site: WebSite) -> None:
    """DNS is asked once: the connection is made to the address the guard checked, naming the host."""
    checked = _Target(httpx.URL(f"http://pages.example:{site.port}/fib"), "127.0.0.1")
    with httpx.Client() as client:
        response = client.send(_request(client, checked))  # type: ignore[arg-type]
    assert "Fibonacci numbers" in response.text
    assert site.requests[-1].headers["Host"] == f"pages.example:{site.port}"


def test_large_page_is_capped_and_the_cut_is_said(site: WebSite) -> None:
    tool = VisitWebpageTool(allow_private_network=True, max_bytes=100_000, max_chars=3_000)
    out = tool(url=f"{site.url}/large?kb=2048")
    assert "Title: A large page" in out
    assert "[the page is larger than 100000 bytes; only its start was read]" in out
    cut = re.search(r"\[\.\.\. cut: (\d+) more characters of this page are not shown\]", out)
    assert cut and int(cut.group(1)) > 50_000
    assert len(out) < 3_000 + 400


def test_non_html_bodies(site: WebSite) -> None:
    tool = VisitWebpageTool(allow_private_network=True)
    for path, kind in (("/report.pdf", "application/pdf"), ("/pixel.png", "image/png")):
        with pytest.raises(PageError, match=f"is {kind}, not a web page"):
            tool(url=site.url + path)
    assert "plain notes: ünïcode survives" in tool(url=f"{site.url}/notes.txt")
    with pytest.raises(PageError, match="HTTP 404"):
        tool(url=f"{site.url}/missing")
    with pytest.raises(PageError, match="redirected more than 2 times"):
        VisitWebpageTool(allow_private_network=True, max_redirects=2)(url=f"{site.url}/chain/5")


# -- web search -----------------------------------------------------------------------------------


def test_duckduckgo_engine_through_ddgs(site: WebSite) -> None:
    search = WebSearchTool(DuckDuckGoEngine(base_url=f"{site.url}/ddg/html/"))
    out = search(query="loopback gazette", max_results=2)
    lines = out.splitlines()
    assert lines[0] == "1. The Loopback Gazette" and lines[1].strip() == f"{site.url}/article"
    assert lines[2].strip() == "About loopback gazette: The Loopback Gazette."
    assert lines[3] == "2. Fibonacci numbers" and "3." not in out
    assert "q=loopback+gazette" in site.requests[-1].body.decode()


_KEYED = [(BraveEngine, "brave", "/brave/search"), (TavilyEngine, "tavily", "/tavily/search"),
          (SerperEngine, "serper", "/serper/search")]


@pytest.mark.parametrize(("engine_class", "name", "path"), _KEYED)
def test_keyed_engines_send_the_key_and_never_show_it(site: WebSite, engine_class: Any, name: str,
                                                      path: str) -> None:
    key = KEYS[name]
    search = WebSearchTool(engine_class(api_key=key, base_url=site.url + path))
    out = search(query="local news", max_results=2)
    assert "1. The Loopback Gazette" in out and f"{site.url}/fib" in out and "Loopback Home" not in out
    assert "<strong>" not in out  # highlight markup is stripped from snippets
    assert key in str(site.requests[-1].headers)  # sent in a header...
    assert key not in site.requests[-1].path  # ...not in the URL (logs, error messages)
    for shown in (out, repr(search.engine), search.description, str(search.openai_schema()),
                  search.python_signature()):
        assert key not in shown
    wrong = WebSearchTool(engine_class(api_key="wrong-key-123", base_url=site.url + path))
    with pytest.raises(SearchError) as caught:
        wrong(query="x")
    assert engine_class.env_var in str(caught.value) and "wrong-key-123" not in str(caught.value)


def test_keyed_engine_reads_its_key_from_the_environment(site: WebSite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="set BRAVE_API_KEY .* or pass BraveEngine\\(api_key=...\\)"):
        WebSearchTool("brave")
    monkeypatch.setenv("BRAVE_API_KEY", KEYS["brave"])
    engine = BraveEngine(base_url=f"{site.url}/brave/search")
    assert "The Loopback Gazette" in WebSearchTool(engine)(query="news")
    with pytest.raises(ValueError, match="choose one of duckduckgo, brave, tavily, serper"):
        WebSearchTool("altavista")


def test_search_engine_unreachable_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    search = WebSearchTool(TavilyEngine(api_key="k", base_url=f"http://127.0.0.1:{port}/search"))
    with pytest.raises(SearchError, match="Tavily search is unreachable"):
        search(query="x")


# -- python_interpreter ---------------------------------------------------------------------------


def test_python_interpreter_runs_in_the_sandbox_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK_HOST_ONLY_MARKER", "visible-in-host")
    with PythonInterpreterTool(imports=["os"]) as py:
        assert "os" in py.description and "no network" in py.description
        assert py(code="a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nprint(a)") == \
            f"{_fibonacci(118)}"
        assert py(code="a * 2") == f"Out: {_fibonacci(118) * 2}"  # state persists between calls
        seen = py(code="import os\nprint(os.getpid(), os.environ.get('AK_HOST_ONLY_MARKER'))")
        pid, marker = seen.split()
        assert int(pid) != os.getpid() and marker == "None"
        with pytest.raises(ToolError, match=r"(?s)^the code raised ImportError\n.*not allowed in this sandbox"):
            py(code="import subprocess")  # a failed call, not a result: an answer beside it is refused


def _fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_base_tools_per_agent_kind() -> None:
    code = base_tools("code")
    tools = base_tools("tools")
    assert [t.name for t in code] == ["web_search", "visit_webpage"]
    assert [t.name for t in tools] == ["web_search", "visit_webpage", "python_interpreter"]
    assert isinstance(code[0].engine, DuckDuckGoEngine)  # the default engine needs no key
    assert tools[2]._sandbox is None  # no kernel until the model first calls it


# -- both agents, through the scripted model server -----------------------------------------------


def _tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]


def _title_finder(body: dict[str, Any]) -> Reply:
    """A model that searches, opens the first result, and answers with the title it read."""
    seen = _tool_results(body)
    if not seen:
        return tool_calls([("web_search", {"query": "loopback gazette"})])
    if len(seen) == 1:
        first_url = re.search(r"https?://\S+", seen[0])
        return tool_calls([("visit_webpage", {"url": first_url.group(0) if first_url else "none"})])
    title = re.search(r"^Title: (.+)$", seen[-1], re.MULTILINE)
    return tool_calls([("final_answer", {"answer": title.group(1) if title else "no title"})])


def test_tool_calling_agent_gets_the_title_of_a_page(site: WebSite, scripted_server: Any) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script(_title_finder)
    tools = [WebSearchTool(DuckDuckGoEngine(base_url=f"{site.url}/ddg/html/")),
             VisitWebpageTool(allow_private_network=True)]
    run = ToolCallingAgent(scripted_server.model(), tools=tools).run("What is the title of the gazette's page?")
    assert run.state == "success", run.error
    assert run.output == PAGES["/article"][0]
    schemas = {t["function"]["name"] for t in scripted_server.requests[0]["tools"]}
    assert {"web_search", "visit_webpage", "final_answer"} <= schemas


def _interpreter_user(body: dict[str, Any]) -> Reply:
    seen = _tool_results(body)
    if not seen:
        return tool_calls([("python_interpreter", {"code": "import math\nmath.factorial(30)"})])
    return tool_calls([("final_answer", {"answer": seen[-1].removeprefix("Out: ")})])


def test_tool_calling_agent_computes_with_python_interpreter(scripted_server: Any) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script(_interpreter_user)
    with PythonInterpreterTool() as py:
        run = ToolCallingAgent(scripted_server.model(), tools=[py]).run("What is 30 factorial?")
        assert py._sandbox is not None  # the code ran in the tool's sandbox kernel
    assert run.state == "success", run.error
    assert run.output == "265252859812191058636308480000000"


def test_a_tasks_variables_are_in_the_python_tool_and_the_model_is_told_where(scripted_server: Any) -> None:
    import pandas as pd

    from agent_kernel.agents import ToolCallingAgent

    orders = pd.DataFrame({"order_id": [1, 2, 3], "customer_id": [7, 7, 8], "price": [2.0, 3.0, 4.0]})
    customers = pd.DataFrame({"customer_id": [7, 8], "country": ["FR", "DE"]})
    scripted_server.script([
        tool_calls([("python_interpreter", {"code": "orders.groupby('country').price.sum()"})]),
        tool_calls([("python_interpreter", {"code": "print(orders.merge(customers).groupby('country').price.sum()"
                                                    ".to_dict())"})]),
        tool_calls([("final_answer", {"answer": {"DE": 4.0, "FR": 5.0}})]),
    ])
    with PythonInterpreterTool(imports=["pandas"]) as py:
        run = ToolCallingAgent(scripted_server.model(), tools=[py]).run(
            "order value by country", variables={"orders": orders, "customers": customers})
    task = scripted_server.requests[0]["messages"][1]["content"]
    assert "Variables already defined in python_interpreter:\n- orders: DataFrame, 3 rows x 3 columns:" in task
    described = scripted_server.requests[0]["tools"][0]["function"]["description"]
    assert described.endswith("Already defined, use them by name (no file to read): orders (DataFrame), "
                              "customers (DataFrame).")
    failed = run.action_steps[0].tool_calls[0]
    assert failed.error is not None and "Hint: 'country' is a column of customers, not of orders: merge" in failed.error
    assert "{'DE': 4.0, 'FR': 5.0}" in str(run.action_steps[1].tool_calls[0].result)
    assert run.state == "success" and run.output == {"DE": 4.0, "FR": 5.0} and run.unverified == []


def test_values_no_tool_holds_are_given_as_values(scripted_server: Any) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script([tool_calls([("final_answer", {"answer": 3})])])
    ToolCallingAgent(scripted_server.model()).run("how long is the list?", variables={"items": [1, 2, 3]})
    task = scripted_server.requests[0]["messages"][1]["content"]
    assert "Values given with the task (no tool holds them: use them as written):\n- items: list len=3" in task


def test_code_agent_with_base_tools_gives_fibonacci_118_exactly(scripted_server: Any) -> None:
    from agent_kernel.agents import CodeAgent

    code = "a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nfinal_answer(a)"
    scripted_server.script([Reply(text=f"Thought: iterate exactly.\n```python\n{code}\n```")])
    with CodeAgent(scripted_server.model(), tools=base_tools("code")) as agent:
        run = agent.run("What is the 118th Fibonacci number?")
    assert run.state == "success", run.error
    assert type(run.output) is int and run.output == _fibonacci(118)
    prompt = scripted_server.requests[0]["messages"][0]["content"]
    assert "def web_search(query: str, max_results: int = 5) -> str:" in prompt
    assert "def visit_webpage(url: str) -> str:" in prompt


def test_code_agent_reads_pages_through_the_host_tool(site: WebSite, scripted_server: Any) -> None:
    """Sandbox code calls visit_webpage in a loop; the fetch (and its guard) run in the host."""
    from agent_kernel.agents import CodeAgent

    code = (f"titles = []\nfor path in ['/', '/article', '/fib']:\n"
            f"    page = visit_webpage(url='{site.url}' + path)\n"
            "    titles.append(page.splitlines()[0].removeprefix('Title: '))\n"
            "try:\n    visit_webpage(url='http://169.254.169.254/latest/meta-data/')\n"
            "except Exception as e:\n    titles.append(type(e).__name__ + ': ' + str(e)[:120])\nfinal_answer(titles)")
    scripted_server.script([Reply(text=f"```python\n{code}\n```")])
    tools = [VisitWebpageTool(allowed_hosts=["127.0.0.1"])]
    with CodeAgent(scripted_server.model(), tools=tools) as agent:
        run = agent.run("Collect the page titles")
    assert run.state == "success", run.error
    assert run.output[:3] == [PAGES[p][0] for p in ("/", "/article", "/fib")]
    assert "URLNotAllowed" in run.output[3] and "169.254.169.254 is a link-local" in run.output[3]
