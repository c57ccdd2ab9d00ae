"""The gateway backend: a sandbox kernel on a Jupyter Kernel Gateway or Enterprise Gateway.

The kernel is created and deleted over the gateway's REST API (`POST /api/kernels` with the
`agent-sandbox` kernelspec, interrupt, restart, `DELETE`), and its messages travel as JSON over the
`/api/kernels/{id}/channels` websocket, each tagged with its channel: in binary frames of the
"v1.kernel.websocket.jupyter.org" protocol where the gateway speaks it (it then relays the kernel's
message parts as they are, rather than decode and re-encode each one), as JSON text where it does
not. The sandbox's settings go in
the create request's env as KERNEL_AGENT_SANDBOX (gateways forward only KERNEL_* variables). The
gateway shares no folder with this machine, so value payloads travel inside the messages
(`Transfer(inline=True)`). Configured like jupyter_server's gateway client: arguments first, then
its JUPYTER_GATEWAY_* environment variables.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import struct
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    websocket_connect,
)

from . import _messages
from ._base import SandboxError, SandboxOptions, parse_size
from ._messages import Malformed, Message
from ._spec import GATEWAY_CONFIG_ENV, KERNEL_NAME

_GONE = ("restarting", "dead")  # statuses the gateway sends when the kernel process ended
_V1 = "v1.kernel.websocket.jupyter.org"  # the websocket protocol of raw message parts (jupyter_server >= 2)
_MAX_PARTS = 64  # parts of one v1 frame (header, parent header, metadata, content, buffers)


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway is and how to authenticate (jupyter_server's JUPYTER_GATEWAY_* names)."""

    url: str
    ws_url: str
    token: str | None = field(default=None, repr=False)
    auth_scheme: str = "token"
    validate_cert: bool = True
    request_timeout: float = 42.0
    kernels_endpoint: str = "/api/kernels"

    @classmethod
    def resolve(cls, url: str, token: str | None) -> GatewayConfig:
        env = os.environ.get
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"gateway={url!r} is not a gateway URL; use one like 'http://host:8888'")
        ws_url = (env("JUPYTER_GATEWAY_WS_URL") or "ws" + url[4:]).rstrip("/")
        return cls(
            url=url,
            ws_url=ws_url,
            token=token or env("JUPYTER_GATEWAY_AUTH_TOKEN") or None,
            auth_scheme=env("JUPYTER_GATEWAY_AUTH_SCHEME") or "token",
            validate_cert=(env("JUPYTER_GATEWAY_VALIDATE_CERT") or "true").lower() not in ("0", "false", "no"),
            request_timeout=float(env("JUPYTER_GATEWAY_REQUEST_TIMEOUT") or 42.0),
            kernels_endpoint="/" + (env("JUPYTER_GATEWAY_KERNELS_ENDPOINT") or "api/kernels").strip("/"),
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"{self.auth_scheme} {self.token}"} if self.token else {}


class GatewayBackend:
    """One kernel on a gateway: REST for its life cycle, the channels websocket for its messages."""

    inline = True
    workdir: Path | None = None

    def __init__(self, url: str, token: str | None) -> None:
        self.config = GatewayConfig.resolve(url, token)
        self.kernel_id: str | None = None
        self._startup_timeout = 60.0
        self._session = ""
        self._ws: WebSocketClientConnection | None = None
        self._v1 = False  # the gateway chose the v1 protocol for this connection
        self._reader: asyncio.Task[None] | None = None
        self.max_reply = _messages.MAX_REPLY  # bytes of one websocket message, and of a reply parsed: see `start`
        self._inbox: deque[tuple[Message, str | None]] = deque()  # with each, its parent's msg_id (None: unread)
        self._inbox_bytes = 0
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._gone: str | None = None  # "restarting" / "dead" from the gateway, "closed" for a lost websocket

    # -- life cycle (REST) ----------------------------------------------------------------------
    async def start(self, root: Path, options: SandboxOptions) -> None:
        self._startup_timeout = options.startup_timeout
        # Pulled values travel inline, base64 in a reply: the largest message is the largest transfer.
        self.max_reply = (parse_size(options.max_transfer, "max_transfer") or 0) * 4 // 3 + _messages.MAX_REPLY
        env = {GATEWAY_CONFIG_ENV: json.dumps(options.launcher_settings(None))}
        kernel = await self._rest("POST", "", {"name": KERNEL_NAME, "env": env}, options.startup_timeout)
        if not isinstance(kernel, dict) or not isinstance(kernel.get("id"), str):
            raise SandboxError(f"the gateway answered the kernel creation with something unexpected: {kernel!r:.200}")
        self.kernel_id = kernel["id"]

    async def interrupt(self) -> None:
        await self._rest("POST", f"/{quote(self._id())}/interrupt", {})

    async def restart(self) -> None:
        await self._disconnect()
        if self._gone != "restarting":  # else the gateway's own restarter has already replaced the kernel
            await self._rest("POST", f"/{quote(self._id())}/restart", {}, self._startup_timeout)
        self._gone = None

    async def aclose(self) -> None:
        await self._disconnect()
        if self.kernel_id is None:
            return
        kernel_id, self.kernel_id = self.kernel_id, None
        try:
            await self._rest("DELETE", f"/{quote(kernel_id)}")
        except SandboxError as exc:  # closing must not fail, but a kernel left running should be known
            warnings.warn(f"the sandbox kernel {kernel_id} on the gateway may still be running: {exc}", stacklevel=2)

    async def exit_status(self) -> int | None:
        return None  # the gateway does not say

    async def is_alive(self) -> bool:
        return self._gone is None

    # -- messages (websocket) -------------------------------------------------------------------
    async def connect(self, timeout: float) -> None:
        # A new session each time: reusing one makes the gateway replay the old connection's channels.
        self._session = uuid.uuid4().hex
        endpoint = f"{self.config.ws_url}{self.config.kernels_endpoint}/{quote(self._id())}/channels"
        url = f"{endpoint}?session_id={self._session}"
        request = HTTPRequest(url, headers=self.config.headers(), validate_cert=self.config.validate_cert,
                              connect_timeout=self.config.request_timeout, request_timeout=self.config.request_timeout)
        try:
            self._ws = await websocket_connect(request, max_message_size=self.max_reply, subprotocols=[_V1])
            if self._ws.protocol is not None:  # (None only once the connection is closed)
                self._ws.protocol.set_nodelay(True)  # small requests go out at once, not after a delayed ACK
            self._v1 = self._ws.selected_subprotocol == _V1
        except (OSError, HTTPClientError) as exc:
            raise SandboxError(f"could not open the kernel's channels on the gateway ({endpoint}): {exc}") from exc
        self._inbox.clear()
        self._inbox_bytes = 0
        self._gone = None
        self._reader = asyncio.ensure_future(self._read(self._ws))
        deadline = time.perf_counter() + timeout
        # Until a request is answered on shell *and* iopub: the gateway may drop requests sent before
        # the kernel is up, and after its own restart of a kernel it skips its check that iopub flows.
        while time.perf_counter() < deadline:
            msg_id = await self._send("shell", "kernel_info_request", {})
            if await self._answered(msg_id, min(1.0, deadline - time.perf_counter())):
                return
            if self._gone == "closed":
                break
        raise SandboxError(f"the sandbox kernel on the gateway did not answer within {timeout:g} s")

    async def _answered(self, msg_id: str, timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        heard: set[str] = set()
        while True:
            heard.update(msg.channel for msg in self.drain(msg_id))
            if {"shell", "iopub"} <= heard:
                return True
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not await self.wait(remaining):
                return False

    async def execute(self, code: str, silent: bool, user_expressions: dict[str, str]) -> str:
        return await self._send("shell", "execute_request", {
            "code": code, "silent": silent, "store_history": False, "user_expressions": user_expressions,
            "allow_stdin": True, "stop_on_error": False,
        })

    async def input(self, text: str) -> None:
        await self._send("stdin", "input_reply", {"value": text})

    def drain(self, msg_id: str) -> list[Message]:
        """The waiting messages for `msg_id` (every stdin request, and those whose parent could not
        be read); the reader, stopped at MAX_BATCH bytes of them, reads on."""
        found = []
        while self._inbox:
            msg, parent = self._inbox.popleft()
            self._inbox_bytes -= msg.size
            if msg.channel == "iopub" and msg.msg_type == "status" and isinstance(msg.content, dict):
                state = msg.content.get("execution_state")
                if isinstance(state, str) and state in _GONE:
                    self._gone = state
                    continue
            if msg.channel == "stdin" or parent in (msg_id, None):
                found.append(msg)
        self._drained.set()
        return found

    async def wait(self, timeout: float) -> bool:
        if self._inbox:
            return True
        if self._ws is None or self._gone == "closed":
            return False
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return bool(self._inbox)

    async def _read(self, ws: WebSocketClientConnection) -> None:
        while (raw := await ws.read_message()) is not None:
            if self._v1 and isinstance(raw, bytes):
                parsed = _parse_v1(raw, self.max_reply)
            else:
                parsed = _parse(raw, self.max_reply)
            if parsed is not None:
                self._inbox.append(parsed)
                self._inbox_bytes += parsed[0].size
                self._arrived.set()
            while self._inbox_bytes > _messages.MAX_BATCH and ws is self._ws:  # a flood waits on the gateway
                self._drained.clear()
                await self._drained.wait()
        if ws is self._ws:  # not a connection this backend closed itself
            self._gone = "closed"
            self._arrived.set()

    async def _send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        if self._ws is None:
            raise SandboxError("the sandbox kernel's channels on the gateway are not open")
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": "agent_kernel", "session": self._session,
                  "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"}
        try:
            if self._v1:
                await self._ws.write_message(_frame_v1(channel, [json.dumps(header).encode(), b"{}", b"{}",
                                                                  json.dumps(content).encode()]), binary=True)
            else:
                await self._ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                                         "content": content, "channel": channel, "buffers": []}))
        except WebSocketClosedError:
            self._gone = "closed"
            raise SandboxError("the connection to the sandbox kernel on the gateway was lost") from None
        return msg_id

    async def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    # -- helpers --------------------------------------------------------------------------------
    def _id(self) -> str:
        if self.kernel_id is None:
            raise SandboxError("the sandbox kernel on the gateway is not started")
        return self.kernel_id

    async def _rest(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One REST call; a failure becomes a SandboxError that says what to check."""
        url = f"{self.config.url}{self.config.kernels_endpoint}{path}"
        request = HTTPRequest(
            url, method=method, headers={**self.config.headers(), "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body), validate_cert=self.config.validate_cert,
            connect_timeout=self.config.request_timeout, request_timeout=timeout or self.config.request_timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as exc:
            raise SandboxError(f"cannot reach the gateway at {self.config.url} ({exc}); is it running, "
                               "and is gateway= (or $JUPYTER_GATEWAY_URL) right?") from None
        if response.code == 599:
            raise SandboxError(f"{method} {url} failed: {response.error}")
        if response.code == 401:
            raise SandboxError(f"the gateway refused {method} {path or '/'} (401): pass its token as "
                               "token=... or set $JUPYTER_GATEWAY_AUTH_TOKEN")
        if response.code >= 400:
            missing_spec = method == "POST" and not path and response.code in (404, 500)
            raise SandboxError(f"the gateway answered {response.code} to {method} {url}: {_reason(response.body)}"
                               + _HINT_NO_KERNELSPEC * missing_spec)
        return json.loads(response.body) if response.body else None


_HINT_NO_KERNELSPEC = (
    f". Is the {KERNEL_NAME!r} kernelspec installed where the gateway runs? "
    "(`python -m agent_kernel install-kernelspec --prefix <gateway's environment>`, see docs/gateway.md)"
)


def _reason(body: bytes | None) -> str:
    try:
        doc = json.loads(body or b"")
        return str(doc.get("message") or doc.get("reason") or doc)[:500]
    except (ValueError, AttributeError):
        return (body or b"").decode("utf-8", "replace")[:500]


def _parse(raw: str | bytes, reply_limit: int) -> tuple[Message, str | None] | None:
    """A message from the websocket (JSON protocol), with its parent's msg_id; binary frames
    (messages with buffers) carry the JSON message first, after a table of offsets, and the
    buffers are ignored. One that would take more than `reply_limit` bytes parsed is not parsed."""
    try:
        if isinstance(raw, bytes):
            count = struct.unpack_from("!I", raw)[0]
            offsets = struct.unpack_from(f"!{count}I", raw, 4)
            raw = raw[offsets[0] : offsets[1] if count > 1 else None]
        size = _messages.json_cost(raw)
        if size > reply_limit:  # its channel is unknown yet: measured against the larger bound
            return Message("iopub", "?", Malformed(_messages.too_big(size)), size), None
        msg = json.loads(raw)
    except (ValueError, struct.error, IndexError, RecursionError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("channel"), str):
        return None
    return _message(msg["channel"], msg.get("header"), msg.get("parent_header"), msg.get("content"), size, reply_limit)


def _frame_v1(channel: str, parts: list[bytes]) -> bytes:
    """A message in the v1 protocol's frame: the number of offsets, the offsets (little-endian
    64-bit) of the channel name, of each part and of the end, then the channel name and the parts."""
    chunks = [channel.encode(), *parts]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    return b"".join([struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets), *chunks])


def _parse_v1(raw: bytes, reply_limit: int) -> tuple[Message, str | None] | None:
    """A message from a v1 frame, with its parent's msg_id (metadata and buffers are not read).
    Its parts are weighed before they are parsed."""
    try:
        count = struct.unpack_from("<Q", raw)[0]
        if not 6 <= count <= _MAX_PARTS:  # channel, header, parent header, metadata, content: 6 offsets at least
            return None
        offsets = struct.unpack_from(f"<{count}Q", raw, 8)
        channel, header, parent, _, content = (raw[start:end] for start, end in itertools.islice(
            itertools.pairwise(offsets), 5))
        channel_name = channel.decode()
        size = sum(map(_messages.json_cost, (header, parent, content)))
        if size > _limit(channel_name, reply_limit):
            return Message(channel_name, "?", Malformed(_messages.too_big(size)), size), None
        return _message(channel_name, json.loads(header), json.loads(parent), json.loads(content), size, reply_limit)
    except (ValueError, struct.error, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _limit(channel: str, reply_limit: int) -> int:
    """Parsed bytes one message may take: a reply carries pulled values inline."""
    return reply_limit if channel == "shell" else _messages.MAX_ITEM


def _message(
    channel: str, header: Any, parent: Any, content: Any, size: int, reply_limit: int
) -> tuple[Message, str | None] | None:
    """The message, if it has the header and parent header this backend reads (its content is
    checked by `_messages.check`)."""
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str) or not isinstance(parent, dict):
        return None
    parent_id = parent.get("msg_id")
    if size > _limit(channel, reply_limit):
        content = Malformed(_messages.too_big(size))
    return Message(channel, header["msg_type"], content, size), parent_id if isinstance(parent_id, str) else ""
