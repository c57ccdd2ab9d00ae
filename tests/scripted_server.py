"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and examples.

litellm's real HTTP client (provider `openai/` with `api_base=server.url`) talks to it, so tests
exercise the same code path a user meets, without the internet. It speaks enough of the API:
`POST /v1/chat/completions` (plain and streamed as SSE `data:` chunks ending in `[DONE]`, content
and `tool_calls`, `usage`, and a usage-only last chunk when `stream_options.include_usage`), and
`GET /v1/models`. Stop sequences in a request are honoured the way a real server does: the text is
cut before the first one.

Scripting
---------
A script is a list of replies, consumed in order per *conversation*. A conversation is chosen by
its key: a script registered with `key="xyz"` serves requests whose first user message contains
"xyz" (the longest matching key wins); requests matching no key use the default script
(`key=None`). Several agents or tests can so share one server. Instead of a list, a script can be a
callable `responder(request_json) -> reply`, asked for every request of its conversation. A
conversation whose script is used up gets HTTP 400 with a message saying so.

Standalone: `python tests/scripted_server.py --port 8765 --script script.json` prints its URL
(`http://127.0.0.1:PORT/v1`) on the first line of stdout and serves until killed.

JSON script format (the file, and the body of `POST /_scripted/script`)::

    {"replies": [REPLY, ...],                 # the default conversation (a bare list also works)
     "conversations": {"KEY": [REPLY, ...]}}  # optional, keyed conversations

    REPLY is a string (text content) or an object with any of:
      "text":         reply content
      "tool_calls":   [{"name": "f", "arguments": {...} or "raw, maybe broken, JSON"}, ...]
      "error":        HTTP status (429, 500, 401, ...) sent instead of a completion
      "message":      the error's message
      "delay":        seconds to wait before answering
      "chunk_delay":  seconds to wait between streamed chunks
      "usage":        [prompt_tokens, completion_tokens] (default: estimated from the text)
      "send_usage":   false to leave usage out of the response
      "finish_reason": override ("stop", or "tool_calls" when there are tool calls)

`GET /_scripted/requests` returns every chat-completion request body received so far, for tests
running in another process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_kernel.models import Model

Arguments = dict[str, Any] | str


@dataclass
class Reply:
    """One scripted answer: content and/or tool calls, or an HTTP error."""

    text: str = ""
    tool_calls: list[tuple[str, Arguments]] = field(default_factory=list)
    error: int | None = None
    message: str = ""
    delay: float = 0.0
    chunk_delay: float = 0.0
    usage: tuple[int, int] | None = None
    send_usage: bool = True
    finish_reason: str | None = None

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Reply:
        if isinstance(data, str):
            return cls(text=data)
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown reply field(s) {sorted(unknown)}; see the format in {__file__}")
        calls = [(c["name"], c.get("arguments", {})) for c in data.get("tool_calls", [])]
        usage = tuple(data["usage"]) if data.get("usage") is not None else None
        return cls(**{**data, "tool_calls": calls, "usage": usage})


def text(content: str, **options: Any) -> Reply:
    return Reply(text=content, **options)


def tool_calls(calls: list[tuple[str, Arguments]], content: str = "", **options: Any) -> Reply:
    """Tool calls; a string as arguments is sent verbatim (to test broken JSON)."""
    return Reply(text=content, tool_calls=list(calls), **options)


def error(status: int, message: str = "scripted error", **options: Any) -> Reply:
    return Reply(error=status, message=message, **options)


Responder = Callable[[dict[str, Any]], "Reply | str"]
Script = list["Reply | str"] | Responder


class _Conversations:
    """The scripts, keyed; thread-safe because the HTTP server answers on many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[Reply] | Responder] = {}
        self.requests: list[dict[str, Any]] = []
        self.answering = self.peak_answering = 0  # requests being answered at once, and the most so far

    @contextlib.contextmanager
    def answering_one(self) -> Iterator[None]:
        with self._lock:
            self.answering += 1
            self.peak_answering = max(self.peak_answering, self.answering)
        try:
            yield
        finally:
            with self._lock:
                self.answering -= 1

    def add(self, replies: Script, key: str | None) -> None:
        with self._lock:
            if callable(replies):
                self._queues[key] = replies
                return
            queue = self._queues.get(key)
            if not isinstance(queue, deque):
                queue = self._queues[key] = deque()
            queue.extend(r if isinstance(r, Reply) else Reply(text=r) for r in replies)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        first_user = _first_user_text(body.get("messages", []))
        with self._lock:
            self.requests.append(body)
            keys = [k for k in self._queues if k is not None and k in first_user]
            key = max(keys, key=len) if keys else None
            source = self._queues.get(key)
            if isinstance(source, deque) and source:
                return source.popleft()
        if callable(source):
            try:
                reply = source(body)
            except Exception as e:  # shown to the test as a refusal, not a retried crash
                return Reply(error=400, message=f"scripted server: responder raised {e!r}")
            return reply if isinstance(reply, Reply) else Reply(text=reply)
        name = "default conversation" if key is None else f"conversation {key!r}"
        return Reply(error=400, message=f"scripted server: no reply left in the {name}; script more replies")


def _first_user_text(messages: list[dict[str, Any]]) -> str:
    for m in messages:
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def _cut_at_stop(content: str, stop: Any) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [content.find(s) for s in stops if s and s in content]
    return (content[: min(cuts)], True) if cuts else (content, False)


def _arguments_json(arguments: Arguments) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _pieces(text: str, size: int = 4) -> Iterator[str]:
    """Small fragments, as a real server streams tokens."""
    for i in range(0, len(text), size):
        yield text[i : i + size]


class _Completion:
    """One reply rendered for one request, in either wire form."""

    def __init__(self, reply: Reply, body: dict[str, Any]) -> None:
        self.reply = reply
        self.model = body.get("model", "scripted")
        self.id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        self.created = int(time.time())
        self.content, stopped = _cut_at_stop(reply.text, body.get("stop"))
        self.calls = [
            {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": name, "arguments": _arguments_json(args)}}
            for name, args in reply.tool_calls
        ]
        self.finish_reason = reply.finish_reason or ("tool_calls" if self.calls else "stop")
        prompt_text = json.dumps(body.get("messages", [])) + json.dumps(body.get("tools", []))
        completion_text = self.content + "".join(c["function"]["arguments"] for c in self.calls)
        prompt, completion = reply.usage or (_estimate_tokens(prompt_text), _estimate_tokens(completion_text))
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.calls else "")}
        if self.calls:
            message["tool_calls"] = self.calls
        doc = self._envelope(
            "chat.completion", [{"index": 0, "message": message, "finish_reason": self.finish_reason}]
        )
        if self.reply.send_usage:
            doc["usage"] = self.usage
        return doc

    def chunks(self, include_usage: bool) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return self._envelope("chat.completion.chunk", [{"index": 0, "delta": delta, "finish_reason": finish}])

        yield chunk({"role": "assistant", "content": ""})
        for piece in _pieces(self.content):
            yield chunk({"content": piece})
        for index, call in enumerate(self.calls):
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            yield chunk({"tool_calls": [head]})
            for piece in _pieces(call["function"]["arguments"], 8):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, self.finish_reason)
        if include_usage and self.reply.send_usage:
            yield {**self._envelope("chat.completion.chunk", []), "usage": self.usage}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects
    # Headers and body go out as separate writes: with Nagle's algorithm on, the body waited for
    # the client's delayed ACK (~40 ms), a latency no real model server adds.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read requests, not logs
        pass

    def _send_json(self, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def do_GET(self) -> None:
        path = self.path.rstrip("/")
        if path.endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model",
                                                               "created": 0, "owned_by": "scripted"}]})
        elif path == "/_scripted/requests":
            self._send_json(200, self.server.conversations.requests)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        try:
            body = self._read_json()
        except json.JSONDecodeError as e:
            self._send_json(400, {"error": {"message": f"invalid JSON body: {e}", "type": "invalid_request_error"}})
            return
        path = self.path.rstrip("/")
        if path == "/_scripted/script":
            _add_json_script(self.server.conversations, body)
            self._send_json(200, {"ok": True})
        elif path.endswith("/chat/completions"):
            self._complete(body)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def _complete(self, body: dict[str, Any]) -> None:
        with self.server.conversations.answering_one():
            self._answer(body)

    def _answer(self, body: dict[str, Any]) -> None:
        reply = self.server.conversations.next_reply(body)
        time.sleep(reply.delay)
        if reply.error is not None:
            self._send_json(reply.error, {"error": {"message": reply.message, "type": _error_type(reply.error),
                                                    "code": reply.error}})
            return
        completion = _Completion(reply, body)
        if not body.get("stream"):
            self._send_json(200, completion.message())
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for doc in completion.chunks(include_usage):
                self._write_chunk(f"data: {json.dumps(doc)}\n\n")
                time.sleep(reply.chunk_delay)
            self._write_chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up mid-stream (interrupt)
            self.close_connection = True

    def _write_chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "server_error")


def _add_json_script(conversations: _Conversations, doc: Any) -> None:
    if isinstance(doc, list):
        doc = {"replies": doc}
    if "replies" in doc:
        conversations.add([Reply.from_json(r) for r in doc["replies"]], doc.get("key"))
    for key, replies in doc.get("conversations", {}).items():
        conversations.add([Reply.from_json(r) for r in replies], key)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    conversations: _Conversations

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients dropping keep-alive connections (a test process ending) is normal, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ScriptedServer:
    """The server in a background thread; a context manager. Binds 127.0.0.1 on a free port."""

    def __init__(self, port: int = 0) -> None:
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.conversations = self._conversations = _Conversations()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every chat-completion request body received, in order."""
        return self._conversations.requests

    @property
    def peak_concurrency(self) -> int:
        """The most chat-completion requests this server was answering at the same time."""
        return self._conversations.peak_answering

    def script(self, replies: Script, key: str | None = None) -> None:
        """Queue replies (or set a responder) for the conversation whose first user message holds `key`."""
        self._conversations.add(replies, key)

    def model(self, name: str = "scripted", **options: Any) -> Model:
        from agent_kernel.models import Model

        return Model(f"openai/{name}", api_base=self.url, api_key="sk-scripted", **options)

    def start(self) -> ScriptedServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--script", help="JSON script file (format at the top of this file)")
    args = parser.parse_args(argv)
    server = ScriptedServer(args.port)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            _add_json_script(server._conversations, json.load(f))
    print(server.url, flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
