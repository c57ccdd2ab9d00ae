"""The tools users switch on first: web search, page reading, and a Python tool for the JSON agent.

Like every Tool they run in the host process. Two rules shape them. A search API key is read here
and never reaches the model or the sandbox (a CodeAgent's sandbox calls the tool through the host
bridge). And `visit_webpage` fetches public addresses only: a model told, or tricked by a page, to
read http://169.254.169.254/ (cloud credentials) or a service on localhost would otherwise turn the
host into a server-side request forgery proxy.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import os
import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .errors import AgentKernelError
from .observation import FrameFacts, frame_facts, render_observation
from .tools import Tool, ToolError

if TYPE_CHECKING:
    import httpx

    from .sandbox import Sandbox, SandboxLike

__all__ = [
    "ALLOW_PRIVATE_URLS_ENV",
    "BraveEngine",
    "DuckDuckGoEngine",
    "PageError",
    "PythonInterpreterTool",
    "SearchEngine",
    "SearchError",
    "SearchResult",
    "SerperEngine",
    "TavilyEngine",
    "URLNotAllowed",
    "VisitWebpageTool",
    "WebSearchTool",
    "base_tools",
]

ALLOW_PRIVATE_URLS_ENV = "AGENT_KERNEL_ALLOW_PRIVATE_URLS"
_TOOLS_EXTRA = "pip install 'agent_kernel[tools]'"


def base_tools(kind: Literal["code", "tools"]) -> list[Tool]:
    """What `add_base_tools=True` adds: search and page reading, plus a Python tool for the JSON agent
    (a CodeAgent already runs Python)."""
    tools: list[Tool] = [WebSearchTool(), VisitWebpageTool()]
    if kind == "tools":
        tools.append(PythonInterpreterTool())
    return tools


def _require(module: str, purpose: str) -> None:
    """Fail when the tool is made, not when the model first calls it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the {module} package: {_TOOLS_EXTRA}")


# -- web search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str = ""


class SearchError(AgentKernelError, RuntimeError):
    """The search service failed; the message is for the model (it never holds the API key)."""


class SearchEngine(ABC):
    """A search backend. Subclass it to plug in another service; `search` runs in a worker thread."""

    label: ClassVar[str]

    @abstractmethod
    def search(self, query: str, max_results: int) -> list[SearchResult]: ...


class DuckDuckGoEngine(SearchEngine):
    """DuckDuckGo's HTML results through the `ddgs` package: no key needed, but rate-limited.

    It drives ddgs's DuckDuckGo engine directly (not the `DDGS` aggregator), so that the address it
    asks (`base_url`, or AGENT_KERNEL_DUCKDUCKGO_URL) can be set: for a mirror, or a local backend in tests.
    """

    label = "DuckDuckGo"

    def __init__(self, *, region: str = "us-en", safesearch: str = "moderate", timeout: int = 10,
                 proxy: str | None = None, base_url: str | None = None) -> None:
        _require("ddgs", "web search with DuckDuckGo")
        self.region = region
        self.safesearch = safesearch
        self.timeout = timeout
        self.proxy = proxy
        # None: DuckDuckGo itself; set for a mirror or a test backend
        self.base_url = base_url or os.environ.get("AGENT_KERNEL_DUCKDUCKGO_URL") or None

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        from ddgs.engines.duckduckgo import Duckduckgo
        from ddgs.exceptions import DDGSException

        engine = Duckduckgo(proxy=self.proxy, timeout=self.timeout)
        if self.base_url:
            engine.search_url = self.base_url
        try:
            found = engine.search(query, region=self.region, safesearch=self.safesearch)
        except DDGSException as e:
            raise SearchError(f"{self.label} is unreachable: {e}") from None
        if found is None:  # ddgs says None for an error status or an empty page
            raise SearchError(f"{self.label} gave no answer (it rate-limits often); try again in a moment")
        return [SearchResult(r.title, r.href, r.body) for r in found if r.href][:max_results]


class _KeyedEngine(SearchEngine):
    """A JSON search API behind a key. The key lives on this object only and is never printed."""

    env_var: ClassVar[str]
    default_url: ClassVar[str]

    def __init__(self, api_key: str | None = None, *, base_url: str | None = None, timeout: float = 15.0) -> None:
        key = api_key or os.environ.get(self.env_var, "")
        if not key.strip():
            raise ValueError(
                f"{self.label} search needs an API key: set {self.env_var} in this process's environment or pass "
                f"{type(self).__name__}(api_key=...). The key stays in the host: neither the model nor the "
                "sandbox sees it.")
        self._api_key = key.strip()
        self.base_url = base_url or self.default_url
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key=<hidden>)"

    @abstractmethod
    def _request(self, query: str, max_results: int) -> dict[str, Any]:
        """httpx.request keyword arguments (method, params or json, headers with the key)."""

    @abstractmethod
    def _results(self, doc: Any) -> list[SearchResult]: ...

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        import httpx

        try:
            response = httpx.request(url=self.base_url, timeout=self.timeout, **self._request(query, max_results))
        except httpx.HTTPError as e:  # the text names the failure, not the request (no key in it)
            raise SearchError(f"{self.label} search is unreachable: {type(e).__name__}: {e}") from None
        if response.status_code in (401, 403):
            raise SearchError(f"{self.label} refused the API key (HTTP {response.status_code}); "
                              f"the user must check {self.env_var}")
        if response.status_code == 429:
            raise SearchError(f"{self.label} rate limit reached (HTTP 429); wait before searching again")
        if response.status_code >= 400:
            raise SearchError(f"{self.label} search failed with HTTP {response.status_code}")
        try:
            return self._results(response.json())[:max_results]
        except (ValueError, AttributeError, TypeError) as e:
            raise SearchError(f"{self.label} answered something that is not a search result list ({e})") from None


class BraveEngine(_KeyedEngine):
    label = "Brave"
    env_var = "BRAVE_API_KEY"
    default_url = "https://api.search.brave.com/res/v1/web/search"

    def _request(self, query: str, max_results: int) -> dict[str, Any]:
        return {"method": "GET", "params": {"q": query, "count": max_results},
                "headers": {"X-Subscription-Token": self._api_key, "Accept": "application/json"}}

    def _results(self, doc: Any) -> list[SearchResult]:
        return [SearchResult(r.get("title", ""), r["url"], r.get("description", ""))
                for r in (doc.get("web") or {}).get("results", [])]


class TavilyEngine(_KeyedEngine):
    label = "Tavily"
    env_var = "TAVILY_API_KEY"
    default_url = "https://api.tavily.com/search"

    def _request(self, query: str, max_results: int) -> dict[str, Any]:
        return {"method": "POST", "json": {"query": query, "max_results": max_results},
                "headers": {"Authorization": f"Bearer {self._api_key}"}}

    def _results(self, doc: Any) -> list[SearchResult]:
        return [SearchResult(r.get("title", ""), r["url"], r.get("content", "")) for r in doc.get("results", [])]


class SerperEngine(_KeyedEngine):
    label = "Serper"
    env_var = "SERPER_API_KEY"
    default_url = "https://google.serper.dev/search"

    def _request(self, query: str, max_results: int) -> dict[str, Any]:
        return {"method": "POST", "json": {"q": query, "num": max_results}, "headers": {"X-API-KEY": self._api_key}}

    def _results(self, doc: Any) -> list[SearchResult]:
        return [SearchResult(r.get("title", ""), r["link"], r.get("snippet", "")) for r in doc.get("organic", [])]


_ENGINES: dict[str, type[SearchEngine]] = {
    "duckduckgo": DuckDuckGoEngine, "brave": BraveEngine, "tavily": TavilyEngine, "serper": SerperEngine,
}
_TAG = re.compile(r"<[^>]+>")


def _one_line(text: str, limit: int) -> str:
    """Snippets from APIs carry highlight tags and entities; the model reads plain words."""
    text = " ".join(html.unescape(_TAG.sub("", text or "")).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WebSearchTool(Tool):
    """Web search with a pluggable engine: "duckduckgo" (default, no key), "brave", "tavily", "serper",
    or a SearchEngine instance (for a keyed engine with its key or base URL given in code)."""

    name = "web_search"
    description = "Search the web. Returns the top results, each with its title, URL and a snippet."
    snippet_chars = 300

    def __init__(self, engine: str | SearchEngine = "duckduckgo", *, limit: int = 10) -> None:
        """Args:
            engine: "duckduckgo", "brave", "tavily", "serper" (keys from the environment), or a SearchEngine.
            limit: the most results one search returns, whatever the model asks for.
        """
        if isinstance(engine, str):
            if engine.lower() not in _ENGINES:
                raise ValueError(f"unknown search engine {engine!r}; choose one of {', '.join(_ENGINES)} "
                                 "or pass a SearchEngine instance")
            engine = _ENGINES[engine.lower()]()
        if not isinstance(engine, SearchEngine):
            raise TypeError(f"engine must be a name or a SearchEngine, got {type(engine).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.engine = engine
        self.limit = limit

    def forward(self, query: str, max_results: int = 5) -> str:
        """Search the web.

        Args:
            query: what to search for, as you would type it into a search box.
            max_results: how many results to return.
        """
        if not query.strip():
            raise ValueError("the query is empty; say what to search for")
        results = self.engine.search(query, max(1, min(max_results, self.limit)))
        if not results:
            return f"No results for {query!r}. Try other words."
        return "\n".join(
            f"{n}. {_one_line(r.title, 200) or '(no title)'}\n   {r.url}"
            + (f"\n   {_one_line(r.snippet, self.snippet_chars)}" if r.snippet.strip() else "")
            for n, r in enumerate(results, 1)
        )


# -- reading web pages, behind the SSRF guard ---------------------------------------------------


class URLNotAllowed(AgentKernelError, ValueError):
    """visit_webpage refused a URL: not http(s), or it leads to a non-public address."""


class PageError(AgentKernelError, RuntimeError):
    """The page could not be read (HTTP error, not a text page, too many redirects)."""


_HOW_TO_ALLOW = (f"To allow private addresses, create VisitWebpageTool(allow_private_network=True) or set "
                 f"{ALLOW_PRIVATE_URLS_ENV}=1 in the host's environment.")


def _private_urls_allowed_by_env() -> bool:
    return os.environ.get(ALLOW_PRIVATE_URLS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _non_public(address: str) -> str | None:
    """Why an address is off limits, or None for a public one.

    An IPv6 address that carries an IPv4 address (mapped, translated, compatible, NAT64, 6to4,
    Teredo, ISATAP) reaches that IPv4 address through a relay, so the IPv4 rules apply to it too.
    """
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        for v4 in _embedded_ipv4(ip):
            if reason := _non_public_ip(v4):
                return f"{reason} ({v4}, carried inside the IPv6 address)"
    return _non_public_ip(ip)


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215 local-use NAT64: never globally reachable


def _non_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    checks = [("a loopback address", ip.is_loopback),
              ("a link-local address (where cloud metadata lives)", ip.is_link_local),
              ("an unspecified address", ip.is_unspecified), ("a multicast address", ip.is_multicast),
              ("a private address", ip.is_private), ("a reserved address", ip.is_reserved)]
    if isinstance(ip, ipaddress.IPv6Address):
        checks += [("a site-local address", ip.is_site_local), ("a local-use NAT64 address", ip in _NAT64_LOCAL)]
    for reason, hit in checks:
        if hit:
            return reason
    return None if ip.is_global else "not a public address"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a transition mechanism would deliver packets for `ip` to."""
    value = int(ip)
    low = ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo is not None:
        found += ip.teredo  # (server, client), the client's address already un-XORed
    compatible = value >> 32 == 0 and value > 1  # ::a.b.c.d (deprecated); :: and ::1 are IPv6's own
    if compatible or value >> 32 == 0xFFFF_0000 or ip in _NAT64_WELL_KNOWN:  # or translated ::ffff:0:a.b.c.d, NAT64
        found.append(low)
    if (value >> 32) & 0xFCFF_FFFF == 0x0000_5EFE:  # ISATAP interface id ::0:5efe:a.b.c.d (u/g bits either way)
        found.append(low)
    return found


@dataclass(frozen=True)
class _Target:
    """Where one request goes: the URL as named, and the checked address to connect to (None: any)."""

    url: httpx.URL
    address: str | None


class VisitWebpageTool(Tool):
    """Reads a page as Markdown. Refuses non-http(s) URLs and, after DNS resolution and again after
    every redirect, addresses that are not public, unless `allow_private_network=True`, the
    environment variable AGENT_KERNEL_ALLOW_PRIVATE_URLS=1, or the host is in `allowed_hosts`.
    The request goes to the very address that was checked, so DNS cannot answer differently later;
    for the same reason it connects directly (proxy environment variables are not used).
    """

    name = "visit_webpage"
    description = "Read a web page: returns its title and its text as Markdown (long pages are cut)."

    def __init__(self, *, allow_private_network: bool | None = None, allowed_hosts: Iterable[str] = (),
                 timeout: float = 20.0, max_bytes: int = 5_000_000, max_chars: int = 8_000,
                 max_redirects: int = 5, user_agent: str = "agent_kernel visit_webpage") -> None:
        """Args:
            allow_private_network: read private and local addresses too; None: only if the environment
                variable AGENT_KERNEL_ALLOW_PRIVATE_URLS=1 (asked at each call).
            allowed_hosts: host names readable even where their addresses are private (an intranet).
            timeout: seconds for the whole request, redirects included.
            max_bytes: a page larger than this is not read.
            max_chars: the Markdown the model gets is cut to this many characters.
            max_redirects: redirects followed, each checked again.
            user_agent: the User-Agent header sent.
        """
        _require("markdownify", "visit_webpage")
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts is a list of host names, e.g. ['intranet.example.com']")
        self.allow_private_network = allow_private_network  # None: ask the environment variable at each call
        self.allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.max_redirects = max_redirects
        self.user_agent = user_agent

    async def forward(self, url: str) -> str:
        """Read a web page.

        Args:
            url: the page's full http or https address.
        """
        import httpx

        try:
            current = httpx.URL(url.strip())
        except httpx.InvalidURL as e:
            raise URLNotAllowed(f"{url!r} is not a valid URL ({e}); give a full http(s):// address") from None
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False,
                                     headers={"User-Agent": self.user_agent}) as client:
            for _ in range(self.max_redirects + 1):
                target = await self._check(current)
                response = await client.send(_request(client, target), stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        current = current.join(response.headers["location"])
                        continue
                    return await self._read(current, response)
                finally:
                    await response.aclose()
        raise PageError(f"{url} redirected more than {self.max_redirects} times; giving up")

    async def _check(self, url: httpx.URL) -> _Target:
        """The SSRF guard: the scheme, then every address the host resolves to."""
        if url.scheme not in ("http", "https"):
            raise URLNotAllowed(f"refused {url}: only http and https URLs can be read, not {url.scheme or 'a bare'}: "
                                "URLs")
        if not url.host:
            raise URLNotAllowed(f"refused {url}: the URL has no host; give a full http(s):// address")
        allowed = self.allow_private_network
        if allowed is None:
            allowed = _private_urls_allowed_by_env()
        if allowed or url.host.lower().rstrip(".") in self.allowed_hosts:
            return _Target(url, None)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                url.host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise PageError(f"cannot resolve {url.host}: {e.strerror}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            reason = _non_public(address)
            if reason:
                shown = url.host if url.host == address else f"{url.host} ({address})"
                raise URLNotAllowed(f"refused {url}: {shown} is {reason}. The page reader only fetches public "
                                    f"addresses, so that a model cannot reach internal services. {_HOW_TO_ALLOW}")
        return _Target(url, addresses[0])

    async def _read(self, url: httpx.URL, response: httpx.Response) -> str:
        if response.status_code >= 400:
            raise PageError(f"{url} answered HTTP {response.status_code} {response.reason_phrase}")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not _is_text(kind):
            raise PageError(f"{url} is {kind}, not a web page; visit_webpage reads HTML and text only")
        body = bytearray()
        cut = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                cut = True
                del body[self.max_bytes :]
                break
        if not kind and b"\x00" in body[:4096]:
            raise PageError(f"{url} sent binary data without a content type; visit_webpage reads HTML and text only")
        text = body.decode(response.charset_encoding or "utf-8", errors="replace")
        is_html = kind in ("text/html", "application/xhtml+xml") or (not kind and "<html" in text[:2048].lower())
        title, content = _html_to_markdown(text) if is_html else ("", text.strip())
        notes = [f"[the page is larger than {self.max_bytes} bytes; only its start was read]"] if cut else []
        if len(content) > self.max_chars:
            notes.append(f"[... cut: {len(content) - self.max_chars} more characters of this page are not shown]")
            content = content[: self.max_chars]
        header = f"Title: {title}\n" if title else ""
        return "\n".join([f"{header}URL: {url}\n", content, *notes]).strip()


def _is_text(kind: str) -> bool:
    return kind.startswith("text/") or kind in ("application/xhtml+xml", "application/json", "application/xml") \
        or kind.endswith(("+json", "+xml"))


def _request(client: httpx.AsyncClient, target: _Target) -> httpx.Request:
    """Connect to the checked address while naming the host (Host header, TLS SNI and certificate)."""
    if target.address is None:
        return client.build_request("GET", target.url)
    netloc = target.url.netloc.decode("ascii")
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    return client.build_request("GET", target.url.copy_with(host=target.address), headers={"Host": netloc},
                                extensions=extensions)


_MARKUP_NOISE = ["script", "style", "noscript", "template", "svg", "iframe", "canvas", "head", "img"]


def _html_to_markdown(text: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(text, "html.parser")
    title = " ".join(soup.title.get_text(" ").split()) if soup.title else ""
    for tag in soup(_MARKUP_NOISE):
        tag.decompose()
    markdown = MarkdownConverter(heading_style="ATX", bullets="-").convert_soup(soup)
    markdown = re.sub(r"[ \t]+\n", "\n", markdown)
    return title, re.sub(r"\n{3,}", "\n\n", markdown).strip()


# -- Python for the tool-calling agent ----------------------------------------------------------


class PythonInterpreterTool(Tool):
    """Python for a ToolCallingAgent: the code runs in a restricted sandbox kernel, never in this process.

    One sandbox serves all calls (started at the first), so variables persist between them like
    cells of a notebook; `push` copies values in (a ToolCallingAgent pushes a task's variables).
    Close it with `close()`/`aclose()` or use the tool as a context manager.
    """

    name = "python_interpreter"
    description = "Run Python code."  # replaced per instance: it lists what may be imported

    def __init__(self, *, imports: Iterable[str] = (), sandbox: SandboxLike | Sandbox | None = None,
                 **sandbox_options: Any) -> None:
        """Args:
            imports: modules the code may import beyond the sandbox's defaults ("*": any installed one).
            sandbox: a sandbox to run in (a SandboxLike such as AsyncSandbox, or a Sandbox; its owner closes
                it); None: the tool starts its own.
            **sandbox_options: for the tool's own sandbox (timeout, memory, network, ...; see AsyncSandbox).
        """
        from .sandbox import DEFAULT_IMPORTS, AsyncSandbox, Sandbox

        if sandbox is not None and sandbox_options:
            raise TypeError(f"pass sandbox options {sorted(sandbox_options)} to the sandbox you give, not to the tool")
        AsyncSandbox(imports=imports, **sandbox_options)  # a bad option fails here, not at the first call
        self.imports = tuple(imports)
        self._options = sandbox_options
        self._sandbox: SandboxLike | None = sandbox.as_async() if isinstance(sandbox, Sandbox) else sandbox
        self._owns_sandbox = sandbox is None
        self._starting = asyncio.Lock()
        self._frames: dict[str, FrameFacts] = {}  # the DataFrames pushed, for the hints
        modules = "any installed module" if "*" in self.imports else ", ".join(sorted(DEFAULT_IMPORTS | set(imports)))
        network = "It can use the network." if sandbox_options.get("network") else "It has no network access."
        self._about = (
            "Run Python code in a sandboxed interpreter; returns what it printed, the value of its last "
            f"expression, and any error. Variables and imports persist between calls. {network} "
            f"Modules you may import: {modules}.")
        self._pushed: dict[str, str] = {}  # name -> kind of the values pushed, named in the description
        self.description = self._about

    async def forward(self, code: str) -> str:
        """Run Python code.

        Args:
            code: the Python source to run. Print what you need to see.
        """
        sandbox = await self._started()
        execution = await sandbox.execute(code)
        observed = render_observation(execution, self._frames)
        if execution.error is not None:  # a failed call: a final answer given beside it was written blind
            raise ToolError(f"the code raised {execution.error.name}\n{observed}")
        return observed

    async def apush(self, **values: Any) -> None:
        """Copy values into the sandbox as variables of the code (by the codec: data, never pickles)."""
        sandbox = await self._started()
        await sandbox.push(**values)
        self._frames.update(frame_facts(values))
        self._pushed.update({name: type(value).__name__ for name, value in values.items()})
        # The model reads the tool's description as it writes the call: there, it learns the data
        # is loaded (the 1.5B otherwise opens a CSV by the variable's name, again and again).
        listed = ", ".join(f"{name} ({kind})" for name, kind in self._pushed.items())
        self.description = f"{self._about} Already defined, use them by name (no file to read): {listed}."

    def push(self, **values: Any) -> None:
        from . import _aio

        _aio.run_sync(self.apush(**values))

    async def _started(self) -> SandboxLike:
        async with self._starting:
            if self._sandbox is None:
                from .sandbox import AsyncSandbox

                self._sandbox = AsyncSandbox(imports=self.imports, **self._options)
            return await self._sandbox.start()

    async def aclose(self) -> None:
        """Stop the sandbox this tool started (one passed in is left to its owner)."""
        if self._owns_sandbox and self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            await sandbox.aclose()

    def close(self) -> None:
        from . import _aio

        _aio.run_sync(self.aclose())

    def __enter__(self) -> PythonInterpreterTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
