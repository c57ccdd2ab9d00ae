"""examples/web_tools.ipynb runs in CI: its agents search and read a loopback web site, with a scripted model.

The site and its DuckDuckGo-shaped search backend (tests/web_site.py) run in this process; the scripted
model server runs as its own process, as for the other example notebooks. The notebook learns both
addresses from the environment (WEB_EXAMPLE_SITE, AGENT_KERNEL_DUCKDUCKGO_URL) and the model from
AGENT_KERNEL_MODEL / AGENT_KERNEL_API_BASE, so it holds no test plumbing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_examples import (
    EXAMPLES,
    _call,
    _code,
    _execute,
    _fibonacci,
    _printed_json,
    scripted_server_process,
)
from web_site import PAGES, WebSite

from agent_kernel.base_tools import ALLOW_PRIVATE_URLS_ENV

NOTEBOOK = "web_tools.ipynb"


def _scripts(site: str) -> dict[str, list[Any]]:
    """What the scripted model answers, per task; the search results and pages are the site's own."""
    return {
        "a page about Fibonacci numbers": [
            _call("web_search", query="Fibonacci numbers"),
            _call("visit_webpage", url=f"{site}/fib"),
            _call("final_answer", answer=PAGES["/fib"][0]),
        ],
        "118th Fibonacci number": [
            "Thought: add up the sequence exactly with Python integers.\n"
            + _code("a, b = 0, 1\nfor _ in range(118):\n    a, b = b, a + b\nfinal_answer(a)"),
        ],
        "read the page's <title> with BeautifulSoup": [
            _code("import requests\nfrom bs4 import BeautifulSoup\n\n"
                  f"response = requests.get({site + '/'!r}, timeout=10)\n"
                  "print(response.status_code, response.headers['content-type'])\n"
                  "final_answer(BeautifulSoup(response.text, 'html.parser').title.get_text(strip=True))"),
        ],
    }


@pytest.fixture(scope="module")
def site() -> Iterator[WebSite]:
    with WebSite() as s:
        yield s


@pytest.fixture(scope="module")
def server_url(site: WebSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scripted_server_process(_scripts(site.url), tmp_path_factory.mktemp("script")) as url:
        yield url


def test_web_tools_notebook(site: WebSite, server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_KERNEL_MODEL", "openai/scripted")
    monkeypatch.setenv("AGENT_KERNEL_API_BASE", server_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")
    monkeypatch.setenv("WEB_EXAMPLE_SITE", site.url + "/")
    monkeypatch.setenv("AGENT_KERNEL_DUCKDUCKGO_URL", site.url + "/ddg/html/")
    monkeypatch.delenv(ALLOW_PRIVATE_URLS_ENV, raising=False)  # the opt-out is the notebook's own, for its site only
    workdir = tmp_path / "examples"
    shutil.copytree(EXAMPLES, workdir)
    elsewhere = site.url.replace("127.0.0.1", "localhost") + "/article"  # the same server under another name
    checks = (
        "import json as _json\n"
        "def _refusal(tool, url):\n"
        "    try:\n        tool(url=url)\n    except Exception as e:\n        return type(e).__name__\n"
        "print(_json.dumps({'fib': fib, 'fib_type': type(fib).__name__, 'page_title': page_title,"
        " 'found': found.output, 'tools': list(calculator.tools),"
        " 'runs': [(r.agent, r.state, [(c.name, c.arguments, c.result) for s in r.action_steps"
        " for c in s.tool_calls]) for r in (found, computed, scraped)],"
        f" 'reader_elsewhere': _refusal(reader, {elsewhere!r}),"
        " 'base_tool_on_site': _refusal(calculator.tools['visit_webpage'], SITE)}))"
    )
    nb = _execute(workdir, NOTEBOOK, [checks])
    state = _printed_json(nb.cells[-1])
    research, _, scraping = state["runs"]
    assert [r[:2] for r in state["runs"]] == [["tools", "success"], ["code", "success"], ["code", "success"]]

    # 1. The search went to the site's DuckDuckGo backend and listed its pages; the reader read the real title.
    (search, _, results), (visit, _, page), (final, _, _) = research[2]
    assert (search, visit, final) == ("web_search", "visit_webpage", "final_answer")
    assert f"{site.url}/fib" in results and PAGES["/fib"][0] in results
    assert page.startswith(f"Title: {PAGES['/fib'][0]}\nURL: {site.url}/fib") and "F(n)=F(n-1)+F(n-2)" in page
    assert state["found"] == PAGES["/fib"][0]
    assert ("POST", "/ddg/html/") in [(r.method, r.path) for r in site.requests]

    # 2. F(118), exactly, as an int; the agent had the base tools.
    assert state["fib"] == _fibonacci(118) == 2046711111473984623691759 and state["fib_type"] == "int"
    assert state["tools"] == ["web_search", "visit_webpage"]

    # 3. The sandbox itself fetched the page with requests and parsed the title with bs4.
    assert state["page_title"] == PAGES["/"][0]
    fetched = [r for r in site.requests if r.path == "/" and r.method == "GET"]
    assert fetched and all(r.headers.get("User-Agent", "").startswith("python-requests/") for r in fetched)
    assert scraping[2] == []  # no host tool did it for the sandbox
    # The SSRF guard stayed on everywhere else: the same server under another name, and the base tool.
    assert state["reader_elsewhere"] == "URLNotAllowed"
    assert state["base_tool_on_site"] == "URLNotAllowed"
