"""Where the sandbox kernel's messages enter the host: each is sized before it is parsed, and its
content checked for the shape the host reads, in this one place.

Sandbox code holds its kernel's session key, so it can sign and send any message on any channel.
Both backends measure a message's raw parts with `json_cost` and refuse one over `MAX_ITEM` before
parsing it; `_collect` passes every parsed message through `check`, which gives its content with
the types the host relies on, or the reason it was dropped. Nothing past this point needs to
guard against a missing key or a wrong type.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import AgentKernelError
from ._codec import json_cost

MAX_ITEM = 16 * 1024**2  # host bytes one message may take once parsed (one display, one reply)
MAX_REPLY = 32 * 1024**2  # host bytes a reply to the host's own request may take (a pull's descriptors)
MAX_FRAME = MAX_REPLY  # raw bytes of one zmq message the host accepts at all (zmq MAXMSGSIZE)
RECEIVE_QUEUE = 2  # messages zmq may queue on each of the host's sockets (RCVHWM): the rest wait in the kernel
MAX_BATCH = 32 * 1024**2  # host bytes of parsed messages one drain hands over before the next drain
MAX_OUTPUT_BYTES = 64 * 1024**2  # default host bytes of outputs (displays, results, errors) kept per execution
MAX_OUTPUT_ITEMS = 10_000  # output items kept per execution


class Message(NamedTuple):
    channel: str  # "iopub", "shell" or "stdin"
    msg_type: str
    content: Any  # as parsed, unchecked: `check` gives it its shape
    size: int  # `json_cost` of the message's parts: about the host bytes it takes parsed


def too_big(size: int) -> str:
    return f"it would take about {size / 1024**2:.1f} MiB here, over what one message may take"


class Malformed(AgentKernelError, ValueError):
    """A message without the shape its type needs; it is dropped, and the execution says so."""


_STREAMS = ("stdout", "stderr")
_OUTPUTS = ("display_data", "update_display_data", "execute_result")
IGNORED = "ignored"  # what `check` gives for a message type the host does not read


def check(msg: Message) -> Any:
    """The content of `msg` with the fields the host reads, typed as it reads them (a new dict
    for outputs and replies: nothing else of what the kernel sent is kept); IGNORED for a type the
    host does not read. Raises Malformed."""
    content, kind = msg.content, msg.msg_type
    if isinstance(content, Malformed):  # the backend could not read it within bounds
        raise content
    if not isinstance(content, dict):
        raise Malformed(f"its content is a {type(content).__name__}, not a dict")
    if msg.channel == "shell":
        return _reply(content)
    if msg.channel == "stdin":
        if kind != "input_request":
            return IGNORED
        return {"prompt": _typed(content, "prompt", str)}
    if kind == "status":
        return {"execution_state": _typed(content, "execution_state", str)}
    if kind == "stream":
        name = content.get("name")
        if name not in _STREAMS:
            raise Malformed(f"its stream name is {_short(name)}, not stdout or stderr")
        return {"name": name, "text": _typed(content, "text", str)}
    if kind in _OUTPUTS:
        data = _typed(content, "data", dict)
        for mime, value in data.items():
            if not isinstance(mime, str) or not (isinstance(value, str) or mime.endswith("json")):
                raise Malformed(f"its data has {_short(mime)} as a {type(value).__name__}, not text")
        out = {"data": data, "metadata": _typed(content, "metadata", dict, {})}
        if kind == "execute_result":
            count = content.get("execution_count")
            if count is not None and type(count) is not int:
                raise Malformed(f"its execution_count is {_short(count)}, not an int")
            out["execution_count"] = count
        return out
    if kind == "error":
        traceback = _typed(content, "traceback", list, [])
        if not all(isinstance(line, str) for line in traceback):
            raise Malformed("its traceback is not a list of text")
        return {"ename": _typed(content, "ename", str), "evalue": _typed(content, "evalue", str), "traceback": traceback}
    if kind == "clear_output":
        return {}
    return IGNORED


def _reply(content: dict[str, Any]) -> dict[str, Any]:
    """An execute_reply's fields: status, the error's name and value, payloads, user expressions
    (each a dict whose "data" is a dict, when given)."""
    reply: dict[str, Any] = {"status": _typed(content, "status", str)}
    for key in ("ename", "evalue"):
        if key in content:
            reply[key] = _typed(content, key, str)
    payload = _typed(content, "payload", list, [])
    if not all(isinstance(p, dict) for p in payload):
        raise Malformed("its payload is not a list of dicts")
    reply["payload"] = payload
    expressions = content.get("user_expressions", {})
    if not isinstance(expressions, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("data", {}), dict) for e in expressions.values()
    ):
        raise Malformed("its user_expressions are not a dict of results")
    reply["user_expressions"] = expressions
    return reply


def _typed(content: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """content[key], which must be a `kind` (or missing, when there is a default)."""
    value = content.get(key, default)
    if not isinstance(value, kind):
        raise Malformed(f"its {key!r} is {_short(value)}, not a {kind.__name__}")
    return value


def _short(value: Any) -> str:
    if isinstance(value, str):
        value = value[:60]
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:59] + "…"
