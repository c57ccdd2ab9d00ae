"""A small web site and search backend on 127.0.0.1, for the web tools' tests and examples.

The site: pages with titles (`/`, `/article`, `/fib`), a redirect (`/redirect?to=URL`), a redirect
chain (`/chain/N`), a large page (`/large?kb=N`), non-HTML bodies (`/report.pdf`, `/pixel.png`),
plain text (`/notes.txt`) and a 404. The search backends answer in the shape of the real services:
DuckDuckGo's HTML results (`POST /ddg/html/`), Brave (`GET /brave/search`, key in
X-Subscription-Token), Tavily (`POST /tavily/search`, Bearer key) and Serper (`POST /serper/search`,
X-API-KEY). Every result points at this site's own pages. Each request is recorded in `requests`.
"""

from __future__ import annotations

import html
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGES = {
    "/": ("Loopback Home", "<h1>Welcome</h1><p>This is the home page. See <a href='/article'>the article</a>.</p>"),
    "/article": (
        "The Loopback Gazette",
        ("<h1>Local news</h1><p>Packets stayed <b>home</b> today.</p><ul><li>first item</li><li>second item</li>"
         "</ul><script>var secret = 'script text must not show';</script><style>p {color: red}</style>"),
    ),
    "/fib": ("Fibonacci numbers", "<h1>F(n)</h1><p>F(0)=0, F(1)=1, F(n)=F(n-1)+F(n-2).</p>"),
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class SiteState:
    keys: dict[str, str] = field(default_factory=dict)  # engine -> the API key it accepts
    requests: list[Recorded] = field(default_factory=list)


def page(title: str, body: str) -> bytes:
    return f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>{body}</body></html>".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _record(self) -> tuple[str, dict[str, list[str]], bytes]:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.state.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
        parts = urlsplit(self.path)
        return parts.path, parse_qs(parts.query), body

    def _results(self, query: str) -> list[dict[str, str]]:
        base = f"http://{self.headers.get('Host')}"
        return [{"title": PAGES[p][0], "url": f"{base}{p}", "snippet": f"About {query}: {PAGES[p][0]}."}
                for p in ("/article", "/fib", "/")]

    def _keyed(self, engine: str, given: str | None) -> bool:
        if given != self.server.state.keys.get(engine):
            self._send(401, json.dumps({"error": "invalid api key"}).encode(), "application/json")
            return False
        return True

    def do_GET(self) -> None:
        path, query, _ = self._record()
        if path in PAGES:
            self._send(200, page(*PAGES[path]))
        elif path == "/redirect":
            self._send(302, b"", headers={"Location": query["to"][0]})
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, b"", headers={"Location": f"/chain/{left - 1}" if left > 0 else "/article"})
        elif path == "/large":
            paragraph = "<p>" + "filler words for a large page. " * 30 + "</p>\n"
            repeat = int(query.get("kb", ["1024"])[0]) * 1024 // len(paragraph) + 1
            self._send(200, page("A large page", "<h1>Large</h1>" + paragraph * repeat))
        elif path == "/report.pdf":
            self._send(200, b"%PDF-1.4 not really a pdf", "application/pdf")
        elif path == "/pixel.png":
            self._send(200, b"\x89PNG\r\n\x1a\n\x00\x00\x00\x00", "image/png")
        elif path == "/notes.txt":
            self._send(200, "plain notes: ünïcode survives\n".encode(), "text/plain; charset=utf-8")
        elif path == "/brave/search":
            if self._keyed("brave", self.headers.get("X-Subscription-Token")):
                q = query["q"][0]
                results = [{"title": r["title"], "url": r["url"], "description": f"<strong>{r['snippet']}</strong>"}
                           for r in self._results(q)][: int(query.get("count", ["10"])[0])]
                self._send(200, json.dumps({"web": {"results": results}}).encode(), "application/json")
        else:
            self._send(404, page("Not found", "<p>nothing here</p>"))

    def do_POST(self) -> None:
        path, _, body = self._record()
        if path == "/ddg/html/":
            q = parse_qs(body.decode())["q"][0]
            items = "".join(f"<div class='result results_links web-result'><div class='links_main body'>"
                            f"<h2><a href='{r['url']}'>{html.escape(r['title'])}</a></h2>"
                            f"<a class='result__snippet' href='{r['url']}'>{html.escape(r['snippet'])}</a></div></div>"
                            for r in self._results(q))
            self._send(200, page(f"{q} at DuckDuckGo", items))
        elif path == "/tavily/search":
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if self._keyed("tavily", given):
                doc = json.loads(body)
                results = [{"title": r["title"], "url": r["url"], "content": r["snippet"]}
                           for r in self._results(doc["query"])][: doc.get("max_results", 5)]
                self._send(200, json.dumps({"query": doc["query"], "results": results}).encode(), "application/json")
        elif path == "/serper/search":
            if self._keyed("serper", self.headers.get("X-API-KEY")):
                doc = json.loads(body)
                organic = [{"title": r["title"], "link": r["url"], "snippet": r["snippet"]}
                           for r in self._results(doc["q"])][: doc.get("num", 10)]
                self._send(200, json.dumps({"organic": organic}).encode(), "application/json")
        else:
            self._send(404, b"{}", "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: SiteState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A reader that stops early (the size cap) drops the connection: normal here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class WebSite:
    """The site in a background thread on 127.0.0.1 (a free port); a context manager."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self.state = SiteState(keys=dict(keys or {}))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="web-site", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    def __enter__(self) -> WebSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
