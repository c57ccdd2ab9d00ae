"""The host side of a sandbox: start the restricted kernel, run code in it, move values in and out.

One AsyncSandbox owns one kernel. Where that kernel runs is its backend's business: locally
(`_LocalBackend`: a process started by jupyter_client over ipc transport in a private 0700
directory, its channels read straight off the zmq sockets) or on a Jupyter Kernel/Enterprise
Gateway (`_gateway.GatewayBackend`: REST and the channels websocket). Everything else (Execution
records, timeouts, restarts, host functions, value transfers) is here, shared. Every reply from the
kernel is untrusted: it is parsed as JSON or decoded by the codec, never unpickled.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hmac
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from .. import _aio
from .._safe import clean_text
from ..errors import AgentKernelError
from . import _codec, _disk, _messages
from ._disk import DiskWatch
from ._kernel_side import CALL_MARKER, CUT_MARK, DROP_MARK, FINAL_ANSWER_PAYLOAD, HANDLE, HeadTail
from ._messages import Message
from ._records import Execution, ExecutionError, Isolation
from ._spec import CONFIG_ENV, KERNEL_NAME, gateway_url, kernel_spec
from ._transfer import Transfer

_UNSAFE_MIME = ("application/javascript", "text/javascript", "application/x-javascript")
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_OWN_FRAMES = ("File " + str(Path(__file__).parent),)  # the sandbox's own frames, noise in a traceback
_FREE_SPACE = "Delete files from the working directory, or give the sandbox a larger disk= cap"
_MAX_VARIABLES = 10_000  # variables one listing shows
_MAX_PREVIEW = 1000  # characters of a variable's name, and of its preview, in a listing
_INTERRUPT_GRACE = 1.5  # seconds a timed-out execution gets to stop after SIGINT before a restart
# zmq's option and flag numbers as plain ints: its IntEnum arithmetic costs microseconds per use.
_EVENTS, _FD, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.FD), int(zmq.POLLIN), int(zmq.NOBLOCK)


class SandboxError(AgentKernelError, RuntimeError):
    """The sandbox could not do what was asked (it failed to start, or an internal call failed)."""


@dataclass(frozen=True)
class SandboxOptions:
    imports: tuple[str, ...] = ()
    timeout: float = 30.0
    memory: int | str | None = "2GB"
    disk: int | str | None = "4GB"  # the sandbox's folders in total (local sandboxes: see _disk.py)
    network: bool = False
    read_paths: tuple[str, ...] = ()
    strict: bool = False
    max_output: int = 100_000  # characters of printed output kept per execution (head and tail)
    max_output_bytes: int | str = _messages.MAX_OUTPUT_BYTES  # host bytes of displays, results, errors per execution
    max_transfer: int | str = "2GB"  # host bytes the values of one pull, final answer or host call may take
    keep_workdir: bool = False
    startup_timeout: float = 60.0
    gateway: str | None = None  # a Jupyter Kernel/Enterprise Gateway's URL; None: a local kernel
    token: str | None = field(default=None, repr=False)

    def launcher_settings(self, root: Path | None) -> dict[str, Any]:
        """The kernel's settings; without `root` (a remote kernel) it picks its own folders."""
        memory, disk = _parse_size(self.memory), _parse_size(self.disk, "disk")
        folders = {} if root is None else {
            "workdir": str(root / "work"), "runtime_dir": str(root / "run"), "transfer_dir": str(root / "transfer"),
            **({"max_file_bytes": disk} if disk is not None else {}),  # no file bigger than the folders' cap
        }
        return {
            **folders,
            "inline": root is None,
            "max_output": self.max_output,
            "max_output_bytes": _parse_size(self.max_output_bytes, "max_output_bytes"),
            "read_paths": [str(Path(p).expanduser().resolve()) for p in self.read_paths],
            "network": self.network,
            "memory_bytes": memory,
            "strict": self.strict,
            "imports": list(self.imports),
        }


def _parse_size(size: int | str | None, option: str = "memory") -> int | None:
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", size.lower())
    if not match:
        raise ValueError(f"{option}={size!r} is not a size; use bytes or a string like '512MB' or '2GB'")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit or " "))


class _SpecManager(KernelSpecManager):
    """Knows the sandbox kernel without it having to be installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == KERNEL_NAME:
            return KernelSpec(resource_dir="", **kernel_spec())
        return super().get_kernel_spec(kernel_name)


class _Outputs:
    """Collects one execution's outputs in nbformat form within bounds: printed text to its head and
    tail, other outputs to `max_bytes` and MAX_OUTPUT_ITEMS held at once. What is cut or dropped
    is said in a note at the end."""

    def __init__(self, max_chars: int, max_bytes: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.error: ExecutionError | None = None
        self._text = HeadTail(max_chars)
        self._max_bytes = max_bytes
        self._held = 0  # estimated host bytes of the items held (streams are bounded by _text)
        self._dropped: dict[str, int] = {}  # why -> how many messages

    def add(self, msg_type: str, content: dict[str, Any], size: int) -> None:
        """Take one checked iopub message (`_messages.check`) of `size` estimated host bytes."""
        if msg_type == "stream":
            head = self._text.add(content["name"], content["text"])
            if head:
                self._append_stream(content["name"], head)
            return
        if msg_type == "clear_output":
            self.items.clear()
            self._held = 0
            return
        if len(self.items) >= _messages.MAX_OUTPUT_ITEMS:
            return self.drop(f"over the {_messages.MAX_OUTPUT_ITEMS} outputs an execution may hold")
        if self._held + size > self._max_bytes:
            return self.drop(f"over the {_disk.mib(self._max_bytes)} of outputs an execution may hold (max_output_bytes)")
        self._held += size
        if msg_type in ("display_data", "update_display_data", "execute_result"):
            data = {k: v for k, v in content["data"].items() if k not in _UNSAFE_MIME}
            out = {"output_type": "display_data" if msg_type != "execute_result" else msg_type, "data": data,
                   "metadata": content["metadata"]}
            if msg_type == "execute_result":
                out["execution_count"] = content["execution_count"]
            self.items.append(out)
        elif msg_type == "error":
            tb = [clean_text(line) for line in content["traceback"]]
            tb = [line for line in tb if not line.lstrip().startswith(_OWN_FRAMES)]
            self.items.append({"output_type": "error", "ename": content["ename"], "evalue": content["evalue"],
                               "traceback": tb})
            self.error = ExecutionError(content["ename"], content["evalue"], "\n".join(tb))

    def drop(self, why: str) -> None:
        """Count a message not kept, to be said at the end."""
        self._dropped[why] = self._dropped.get(why, 0) + 1

    def _append_stream(self, name: str, text: str) -> None:
        last = self.items[-1] if self.items else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def finish(self) -> bool:
        """Append the kept tail and the notes; True when something was cut or dropped (here, or
        already in the kernel)."""
        note, tail = self._text.finish()
        if note:
            self._append_stream(tail[0][0] if tail else "stdout", note)
        for name, text in tail:
            self._append_stream(name, text)
        for why, count in self._dropped.items():
            self._append_stream("stderr", f"\n[... {count} message{'s' * (count > 1)} {DROP_MARK} {why}]\n")
        return note is not None or any(
            o["output_type"] == "stream" and (CUT_MARK in o["text"] or DROP_MARK in o["text"]) for o in self.items
        )


class _Backend(Protocol):
    """Where the kernel runs and how its messages travel. AsyncSandbox holds all the rest."""

    inline: bool  # True: no folder is shared with the kernel, payloads travel inside the messages
    workdir: Path | None  # the kernel's working directory, when it is on this machine
    max_reply: int  # host bytes a reply may take parsed (its inline payloads included)

    async def start(self, root: Path, options: SandboxOptions) -> None:
        """Create the kernel (`root`: this sandbox's private folder here)."""

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers."""

    async def execute(self, code: str, silent: bool, user_expressions: dict[str, str]) -> str:
        """Send an execute_request; its msg_id."""

    async def input(self, text: str) -> None:
        """Answer the kernel's input_request."""

    def drain(self, msg_id: str) -> list[Message]:
        """The messages waiting now: replies and outputs for `msg_id`, every stdin request."""

    async def wait(self, timeout: float) -> bool:
        """Until a message is waiting (True) or `timeout` seconds pass (False)."""

    async def is_alive(self) -> bool: ...

    async def exit_status(self) -> int | None:
        """How a dead kernel ended, when that is known here."""

    async def interrupt(self) -> None: ...

    async def restart(self) -> None:
        """Replace the kernel (dead or hung); `connect` follows."""

    async def close(self) -> None: ...


class _LocalBackend:
    """A kernel process on this machine, its channels read straight off the zmq sockets."""

    inline = False
    max_reply = _messages.MAX_REPLY

    def __init__(self) -> None:
        self.km: AsyncKernelManager | None = None
        self.workdir: Path | None = None
        self._kc: Any = None
        self._sockets: tuple[zmq.Socket, ...] = ()
        self._waiter: asyncio.Future[bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, root: Path, options: SandboxOptions) -> None:
        self._loop = asyncio.get_running_loop()
        runtime_dir = root / "run"
        self.workdir = root / "work"
        # Off the event loop: a directory operation can take milliseconds, and other sandboxes wait.
        await asyncio.to_thread(_make_folders, runtime_dir, self.workdir)
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=_SpecManager(),
            transport="ipc",
            ip=str(runtime_dir / "k"),
            connection_file=str(runtime_dir / "kernel.json"),
            client_class="agent_kernel.sandbox._provisioner.ReadyClient",
            context=_zmq_context(),
        )
        # The kernel's own packer on this side too, and orjson to parse: the host reads every message.
        km.session.packer = "agent_kernel.sandbox._launcher._pack"
        km.session.unpacker = "orjson.loads"
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env[CONFIG_ENV] = json.dumps(options.launcher_settings(root))
        await km.start_kernel(env=env, cwd=str(self.workdir))
        self.km = km

    async def connect(self, timeout: float) -> None:
        assert self.km is not None
        self._kc = self.km.client()
        self._kc.start_channels()
        try:
            await self._kc.wait_for_ready(timeout=timeout)
        except RuntimeError as exc:
            output = self.km.provisioner.output() if self.km.provisioner is not None else ""
            raise SandboxError(f"{exc}. Kernel output: {output or '(none)'}") from exc
        channels = (self._kc.iopub_channel.socket, self._kc.shell_channel.socket, self._kc.stdin_channel.socket)
        # From here on the channels are used through plain (blocking) shadows of the asyncio sockets,
        # and the event loop watches their file descriptors directly: an asyncio socket makes a
        # future and a poller registration per read, half of the host's cost of a round trip.
        self._sockets = tuple(zmq.Socket.shadow(sock.underlying) for sock in channels)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.get(_FD), self._on_readable, sock)

    def _on_readable(self, sock: zmq.Socket) -> None:
        # zmq's descriptor is edge-triggered: reading EVENTS re-arms it, and says whether a message waits.
        if sock.get(_EVENTS) & _POLLIN and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if not sock.closed:
                loop.remove_reader(sock.get(_FD))
        self._sockets = ()

    async def execute(self, code: str, silent: bool, user_expressions: dict[str, str]) -> str:
        content = {
            "code": code, "silent": silent, "store_history": False, "user_expressions": user_expressions,
            "allow_stdin": True,
            "stop_on_error": False,  # one failed execution must not abort the next one queued behind it
        }
        return self._kc.session.send(self._sockets[1], "execute_request", content)["header"]["msg_id"]

    async def input(self, text: str) -> None:
        self._kc.session.send(self._sockets[2], "input_reply", {"value": text})

    def drain(self, msg_id: str) -> list[Message]:
        iopub, shell, stdin = self._sockets
        return [*self._drain(iopub, "iopub", msg_id), *self._drain(shell, "shell", msg_id),
                *self._drain(stdin, "stdin", None)]

    def _drain(self, sock: zmq.Socket, channel: str, msg_id: str | None) -> list[Message]:
        """The messages waiting on `sock` that answer `msg_id` (all, when None), up to MAX_BATCH
        host bytes of them (the rest wait for the next drain).

        Leaner than Session.deserialize (a quarter of its cost): the signature is checked, only the
        parent header is parsed for messages to someone else, and dates stay text (none is read here).
        Each part is weighed before it is parsed; one that would take too much is not parsed.
        """
        found: list[Message] = []
        batch = 0
        while batch < _messages.MAX_BATCH and sock.get(_EVENTS) & _POLLIN:  # cheaper than a zmq.Again per empty socket
            msg = self._read(sock.recv_multipart(_NOBLOCK), channel, msg_id)
            if msg is not None:
                found.append(msg)
                batch += msg.size
        return found

    def _read(self, frames: list[bytes], channel: str, msg_id: str | None) -> Message | None:
        """One message off the wire, if it answers `msg_id`; its content is a Malformed when it
        cannot be read within bounds (the execution then says a message was dropped)."""
        session = self._kc.session
        size = sum(map(len, frames))
        try:
            _, (signature, *parts) = session.feed_identities(frames)
            header, parent, _, content = parts[:4]
        except ValueError:
            return Message(channel, "?", _messages.Malformed("it is not a Jupyter message"), size)
        if session.auth is not None and not hmac.compare_digest(signature, session.sign(parts[:4])):
            return Message(channel, "?", _messages.Malformed("its signature is wrong"), size)
        size = _messages.json_cost(header) + _messages.json_cost(parent) + _messages.json_cost(content) + len(parts[2])
        if size > (_messages.MAX_REPLY if channel == "shell" else _messages.MAX_ITEM):
            return Message(channel, "?", _messages.Malformed(_messages.too_big(size)), size)
        try:
            parent_id = session.unpack(parent).get("msg_id") if msg_id is not None else None
            if parent_id != msg_id:
                return None
            msg_type = session.unpack(header)["msg_type"]
            if not isinstance(msg_type, str):
                raise TypeError
        except (ValueError, TypeError, KeyError, AttributeError):  # orjson's errors are ValueErrors
            return Message(channel, "?", _messages.Malformed("its header is not a JSON object with a msg_type"), size)
        try:
            return Message(channel, msg_type, session.unpack(content), size)
        except ValueError:
            return Message(channel, msg_type, _messages.Malformed("its content is not JSON"), size)

    async def wait(self, timeout: float) -> bool:
        if any(sock.get(_EVENTS) & _POLLIN for sock in self._sockets):
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(False))
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def is_alive(self) -> bool:
        return self.km is not None and await self.km.is_alive()

    async def exit_status(self) -> int | None:
        return await self.km.provisioner.poll() if self.km is not None and self.km.provisioner else None

    async def interrupt(self) -> None:
        assert self.km is not None
        await self.km.interrupt_kernel()

    async def restart(self) -> None:
        assert self.km is not None
        self._unwatch()
        self._kc.stop_channels()
        await self.km.restart_kernel(now=True)

    def abandon(self) -> None:
        """For a sandbox dropped unclosed, from any thread (a finalizer's): the kernel is killed now,
        and `close` runs on the sandbox's loop when that loop runs again (at exit it may not: the
        process's end then closes the channels)."""
        km, loop = self.km, self._loop
        process = km.provisioner.process if km is not None and km.provisioner is not None else None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
        if km is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to let go on it
                loop.call_soon_threadsafe(_close_abandoned, self)

    async def close(self) -> None:
        if self._kc is not None:
            self._unwatch()
            self._kc.stop_channels()
            self._kc = None
        if self.km is not None:
            km, self.km = self.km, None
            await km.shutdown_kernel(now=True)


_abandoned: set[asyncio.Task[None]] = set()  # closes in progress of dropped sandboxes, held until done


def _close_abandoned(backend: _LocalBackend) -> None:
    task = asyncio.ensure_future(backend.close())
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


def _release(backend: _Backend, root: Path, keep_workdir: bool) -> None:
    """The finalizer of a sandbox dropped without `close()`: what is safe from any thread, at any
    time (a garbage collection, the interpreter's exit). A gateway's kernel is left to the
    gateway, which culls idle kernels."""
    if isinstance(backend, _LocalBackend):
        backend.abandon()
    if not keep_workdir:
        shutil.rmtree(root, ignore_errors=True)


def _make_folders(runtime_dir: Path, workdir: Path) -> None:
    runtime_dir.mkdir(mode=0o700)
    workdir.mkdir()


_contexts: dict[int, zmq.asyncio.Context] = {}


def _zmq_context() -> zmq.asyncio.Context:
    """One zmq context (one I/O thread) for all of this process's local sandboxes, not one each.

    A kernel binds its sockets some tens of ms after its start: clients retry connecting every
    10 ms (backing off to 1 s for a kernel that is gone), not zmq's fixed 100 ms.
    """
    context = _contexts.get(os.getpid())  # a forked process makes its own
    if context is None or context.closed:
        context = _contexts[os.getpid()] = zmq.asyncio.Context()
        context.setsockopt(zmq.RECONNECT_IVL, 10)
        context.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # What a kernel's messages may hold of this process's memory before they are read: a
        # bigger message drops the connection (which reconnects), more messages wait in the kernel.
        context.setsockopt(zmq.MAXMSGSIZE, _messages.MAX_FRAME)
        context.setsockopt(zmq.RCVHWM, _messages.RECEIVE_QUEUE)
    return context


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="agent-sandbox-"))
    root.chmod(0o711)  # traversable, not listable: lets the kernel drop to an unprivileged uid
    # Outside the workdir: sandbox code may write files in it but cannot swap it for a symlink.
    (root / "transfer").mkdir()
    return root


class AsyncSandbox:
    """A restricted Python kernel for untrusted code. Use `async with AsyncSandbox(...) as sb`.

    `gateway="http://host:8888"` (or $JUPYTER_GATEWAY_URL) runs the kernel on a Jupyter
    Kernel/Enterprise Gateway instead of this machine, with `token` (or $JUPYTER_GATEWAY_AUTH_TOKEN).
    """

    def __init__(
        self,
        *,
        imports: Iterable[str] = (),
        timeout: float = 30.0,
        memory: int | str | None = "2GB",
        disk: int | str | None = "4GB",
        network: bool = False,
        read_paths: Iterable[str | os.PathLike[str]] = (),
        strict: bool = False,
        max_output: int = 100_000,
        max_output_bytes: int | str = _messages.MAX_OUTPUT_BYTES,
        max_transfer: int | str = "2GB",
        keep_workdir: bool = False,
        gateway: str | None = None,
        token: str | None = None,
    ) -> None:
        self.options = SandboxOptions(
            imports=tuple(imports), timeout=timeout, memory=memory, disk=disk, network=network,
            read_paths=tuple(str(p) for p in read_paths), strict=strict, max_output=max_output,
            max_output_bytes=max_output_bytes, max_transfer=max_transfer, keep_workdir=keep_workdir,
            gateway=gateway_url(gateway), token=token,
        )
        _parse_size(memory)  # fail now on a bad size, not in the kernel
        self._max_output_bytes = _parse_size(max_output_bytes, "max_output_bytes") or 0
        self._max_transfer = _parse_size(max_transfer, "max_transfer") or 0
        self._disk_cap = _parse_size(disk, "disk")
        self.isolation = Isolation()
        self._backend = _backend_for(self.options)
        self._root: Path | None = None
        self._transfer: Transfer | None = None
        self._disk: DiskWatch | None = None
        self._finalizer: weakref.finalize | None = None  # kills the kernel of a sandbox dropped unclosed
        self._starting: asyncio.Task[None] | None = None
        self._functions: dict[str, Callable[..., Any]] = {}
        self._lock = asyncio.Lock()
        self._stopped: str | None = None  # why the disk watch restarted the kernel, for the next execute

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._root is None:
            raise SandboxError("the sandbox is not started")
        if self._backend.workdir is None:
            raise SandboxError("this sandbox's working directory is on the gateway's machine, not this one")
        return self._backend.workdir

    async def start(self) -> AsyncSandbox:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._boot())
        await self._starting
        return self

    async def _boot(self) -> None:
        # Folder work off the event loop: on a slow disk a few ms each, and many sandboxes share the loop.
        self._root = await asyncio.to_thread(_make_root)
        self._finalizer = weakref.finalize(self, _release, self._backend, self._root, self.options.keep_workdir)
        transfer_dir = self._root / "transfer"
        self._transfer = Transfer(transfer_dir, inline=self._backend.inline)
        if self._disk_cap is not None and not self._backend.inline:  # a gateway's kernel keeps its files there
            self._disk = DiskWatch(self._root, self._disk_cap, self._lock)
        try:
            await self._backend.start(self._root, self.options)
            await self._connect()
        except Exception as exc:
            await self.close()
            raise SandboxError(f"the sandbox kernel failed to start: {exc}") from exc
        if self._disk is not None:
            self._disk.watch(self._stop_writes)

    async def _connect(self) -> None:
        try:
            await self._backend.connect(self.options.startup_timeout)
        except SandboxError as exc:
            raise SandboxError(f"{exc}; strict={self.options.strict}") from exc
        iso = await self._evaluate(f"{HANDLE}.isolation()", locked=True)
        self.isolation = Isolation(active=iso["active"], missing=iso["missing"])
        if self._disk is not None:
            self.isolation.active["disk"] = (
                f"the folders' total capped at {_disk.mib(self._disk.cap)}, measured by the host every "
                f"{_disk.EVERY:g} s while the kernel lives (a file never exceeds the cap; the total can, briefly)"
            )
        else:
            self.isolation.missing["disk"] = (
                "the kernel's folders are on the gateway's machine: capping them is its job"
                if self._backend.inline else "disk=None: the folders' total is not capped"
            )
        if self._functions:
            await self._register_stubs(self._functions, locked=True)

    async def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._disk is not None:
            self._disk.stop()
        if self._starting is not None:
            self._starting = None
            await self._backend.close()
        if self._root is not None and not self.options.keep_workdir:
            await _aio.to_thread(shutil.rmtree, self._root, ignore_errors=True)

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _restart(self) -> None:
        """Replace a dead or hung kernel; the working directory survives, variables do not."""
        await self._backend.restart()
        await self._connect()

    async def _stop_writes(self, over: str) -> None:
        """The folders grew over the disk cap while no code ran (see _disk.py): restart the kernel
        now; the next execute says so."""
        if self._lock.locked():
            return  # an execution began meanwhile: its own measures see the cap
        async with self._lock:
            why = f"{over} while no code ran (something the code started went on writing)"
            try:
                await self._restart()
            except (SandboxError, RuntimeError, OSError) as exc:
                why += f"; the sandbox could not be restarted ({exc})"
            self._stopped = f"{why}: the sandbox was restarted, its variables were lost and this code was not run"

    # -- running code ---------------------------------------------------------------------------
    async def execute(self, code: str, timeout: float | None = None) -> Execution:
        """Run `code`; outputs, errors and a final answer come back in the Execution."""
        execution, reply = await self._run(code, {}, timeout=timeout)
        budget = _codec.Budget(self._max_transfer)
        for payload in reply.get("payload", ()):
            if payload.get("source") == FINAL_ANSWER_PAYLOAD:
                try:
                    execution.final_answer = self._decode(payload.get("final"), budget)
                except SandboxError as exc:  # the code learns why, and can answer with less
                    execution.error = execution.error or ExecutionError("FinalAnswerRefused", str(exc))
                else:
                    execution.has_final_answer = True
        return execution

    async def _run(
        self, code: str, user_expressions: dict[str, str], timeout: float | None, silent: bool = False
    ) -> tuple[Execution, dict[str, Any]]:
        await self.start()
        async with self._lock:
            if self._stopped is not None and not silent:
                stopped, self._stopped = self._stopped, None
                error = ExecutionError("DiskLimitError", f"{stopped}. {_FREE_SPACE}")
                return Execution(code=code, error=error, restarted=True), {}
            try:
                return await self._exchange(code, user_expressions, timeout, silent)
            except asyncio.CancelledError:  # the caller gave up (an interrupted agent): stop the code too
                await asyncio.shield(self._backend.interrupt())
                raise

    async def _exchange(
        self, code: str, user_expressions: dict[str, str], timeout: float | None, silent: bool
    ) -> tuple[Execution, dict[str, Any]]:
        """One execute_request, answered; the caller holds the lock (or is starting the kernel)."""
        started = time.perf_counter()
        limit = self.options.timeout if timeout is None else timeout
        outputs = _Outputs(self.options.max_output, self._max_output_bytes)
        execution = Execution(code=code)
        if self._disk is not None:
            self._disk.began()
        msg_id = await self._backend.execute(code, silent, user_expressions)
        outcome, reply = await self._collect(msg_id, outputs, started + limit, started)
        if outcome == "done" and self._disk is not None and (over := self._disk.over_since(started)):
            outputs.error = _with_notice(outputs.error, f"{over}. {_FREE_SPACE}")
        elif outcome not in ("done", "dead"):
            name, why, advice = (
                ("TimeoutError", f"the code ran longer than {limit:g} s and", "")
                if outcome == "timeout" else ("DiskLimitError", f"{outcome}, and the code", f". {_FREE_SPACE}")
            )
            await self._backend.interrupt()
            outcome, reply = await self._collect(msg_id, outputs, time.perf_counter() + _INTERRUPT_GRACE)
            if outcome == "done" and outputs.error is not None and outputs.error.name != "KeyboardInterrupt":
                # it ended on an error of its own before the interrupt landed: that error, with the notice
                outputs.error = _with_notice(outputs.error, f"{why} was stopped; variables are kept{advice}")
            elif outcome == "done":
                outputs.error = ExecutionError(name, f"{why} was interrupted; variables are kept{advice}")
            else:
                outputs.error = ExecutionError(
                    name,
                    f"{why} did not stop when interrupted; the sandbox was restarted and its variables were lost{advice}",
                )
                execution.restarted = True
        if outcome == "dead":
            status = await self._backend.exit_status()
            outputs.error = ExecutionError(
                "SandboxDied",
                f"the sandbox kernel died (exit status {status}; out of memory or a crash); "
                "it was restarted and its variables were lost",
            )
            execution.restarted = True
        if execution.restarted:
            await self._restart()
        execution.truncated = outputs.finish()
        execution.outputs = outputs.items
        execution.error = outputs.error
        if execution.error is None and reply.get("status") == "error":
            execution.error = ExecutionError(reply.get("ename", "Error"), reply.get("evalue", ""))
        execution.duration = time.perf_counter() - started
        return execution, reply

    async def _collect(
        self, msg_id: str, outputs: _Outputs, deadline: float, watched_since: float = math.inf
    ) -> tuple[str, dict[str, Any]]:
        """Read the kernel's messages for `msg_id` until its reply and idle status.

        The outcome: "done", "timeout", "dead", or what a measure of the disk watch begun at or after
        `watched_since` found over the cap.
        """
        backend = self._backend
        reply: dict[str, Any] | None = None
        idle = False
        while True:
            for msg in backend.drain(msg_id):
                try:
                    content = _messages.check(msg)
                except _messages.Malformed as exc:
                    outputs.drop(f"a malformed {msg.msg_type[:40]!r} on {msg.channel} ({exc})")
                    continue
                if content is _messages.IGNORED:
                    continue
                if msg.channel == "iopub":
                    if msg.msg_type == "status":
                        idle = content["execution_state"] == "idle"
                    else:
                        outputs.add(msg.msg_type, content, msg.size)
                elif msg.channel == "shell":
                    reply = content
                else:
                    await backend.input(await self._answer_input(content["prompt"], deadline - time.perf_counter()))
            if reply is not None and idle:
                return "done", reply
            if self._disk is not None and (over := self._disk.over_since(watched_since)):
                return over, reply or {}
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return "timeout", reply or {}
            if not await backend.wait(min(remaining, _disk.EVERY)) and not await backend.is_alive():
                return "dead", {}

    # -- host functions -------------------------------------------------------------------------
    async def register_function(self, name: str, fn: Callable[..., Any], doc: str | None = None) -> None:
        """Make `name(...)` in sandbox code call `fn` in this process (arguments cross by the codec)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a Python identifier")
        self._functions[name] = fn
        if self._starting is not None:
            await self._register_stubs({name: fn}, doc)

    async def _register_stubs(
        self, functions: dict[str, Callable[..., Any]], doc: str | None = None, locked: bool = False
    ) -> None:
        docs = {name: doc or (fn.__doc__ or "") for name, fn in functions.items()}
        await self._evaluate(f"{HANDLE}.register({json.dumps(json.dumps(docs))})", locked=locked)

    async def _answer_input(self, prompt: str, time_left: float) -> str:
        if not prompt.startswith(CALL_MARKER):
            return ""  # plain input(): there is no one to type an answer
        try:
            request = json.loads(prompt[len(CALL_MARKER) :])
            fn = self._functions[request["name"]]
            budget = _codec.Budget(self._max_transfer)  # all the arguments of this call together
            args = [self._decode(d, budget) for d in request["args"]]
            kwargs = {k: self._decode(d, budget) for k, d in request["kwargs"].items()}
            if asyncio.iscoroutinefunction(fn):
                call = fn(*args, **kwargs)
            else:
                call = asyncio.to_thread(fn, *args, **kwargs)
            result = await asyncio.wait_for(call, max(time_left, 0.001))
            return json.dumps({"ok": self._transfer.encode(result, f"{request['name']}_result")})
        except asyncio.TimeoutError:
            return json.dumps({"error": "the host function did not return before the execution timeout"})
        except Exception as exc:  # reported to the sandbox code as HostFunctionError
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    # -- values ---------------------------------------------------------------------------------
    async def push(self, **values: Any) -> None:
        """Bind `values` as variables in the sandbox."""
        await self.start()
        descriptors = {name: self._transfer.encode(v, name) for name, v in values.items()}
        try:
            await self._evaluate(f"{HANDLE}.load({json.dumps(json.dumps(descriptors))})")
        finally:  # whatever the kernel did not consume must not linger in the transfer folder
            for descriptor in descriptors.values():
                self._transfer.cleanup(descriptor)

    async def pull(self, names: Iterable[str]) -> dict[str, Any]:
        """Copy sandbox variables out. Raises KeyError naming any that do not exist."""
        names = list(names)
        answer = await self._evaluate(f"{HANDLE}.dump({json.dumps(json.dumps(names))})")
        if not isinstance(answer, dict) or not isinstance(answer.get("values"), dict) or not isinstance(
            answer.get("missing", []), list
        ):
            raise SandboxError("the sandbox answered a pull with something malformed")
        budget = _codec.Budget(self._max_transfer)  # all the names of this pull together
        try:
            said_missing = {name for name in answer.get("missing", []) if isinstance(name, str)}
            missing = [name for name in names if name in said_missing]
            if missing:
                raise KeyError(f"not defined in the sandbox: {', '.join(missing)}")
            return {name: self._decode(answer["values"].get(name), budget) for name in names}
        finally:  # what was not decoded must not linger in the transfer folder
            for descriptor in answer["values"].values():
                with contextlib.suppress(_codec.TransferError):  # a bad name names no file of ours
                    self._transfer.cleanup(descriptor)

    async def variables(self) -> dict[str, str]:
        """The sandbox's variables, each with a short preview (type, shape, columns): at most
        _MAX_VARIABLES of them, names and previews cut to _MAX_PREVIEW characters."""
        listing = await self._evaluate(f"{HANDLE}.variables()")
        if not isinstance(listing, dict) or not all(isinstance(v, str) for v in listing.values()):
            raise SandboxError("the sandbox answered a variable listing with something malformed")
        shown = dict(itertools.islice(listing.items(), _MAX_VARIABLES))
        if len(listing) > _MAX_VARIABLES:
            shown["…"] = f"{len(listing) - _MAX_VARIABLES} more variables not listed"
        return {name[:_MAX_PREVIEW]: preview[:_MAX_PREVIEW] for name, preview in shown.items()}

    def _decode(self, descriptor: Any, budget: _codec.Budget) -> Any:
        try:
            return self._transfer.decode(descriptor, budget=budget)
        except _codec.TransferError as exc:
            raise SandboxError(f"a value from the sandbox was refused: {exc}") from None

    async def _evaluate(self, expression: str, *, locked: bool = False) -> Any:
        """Evaluate one of the kernel side's own calls; it answers JSON text, parsed here.

        `locked`: the caller already holds the lock (a restart inside an execution, or the start).
        """
        run = self._exchange if locked else self._run
        execution, reply = await run("", {"r": expression}, self.options.startup_timeout, True)
        try:
            return _expression_value(reply, "r", self._backend.max_reply)
        except SandboxError as exc:
            raise SandboxError(f"sandbox call {expression.split('(')[0]} failed: {execution.error or exc}") from None


def _with_notice(error: ExecutionError | None, notice: str) -> ExecutionError:
    """The code's own error with `notice` added, or a DiskLimitError saying it."""
    if error is None:
        return ExecutionError("DiskLimitError", notice)
    return ExecutionError(error.name, f"{error.value}\n{notice}", f"{error.traceback}\n{notice}" if error.traceback else "")


def _backend_for(options: SandboxOptions) -> _Backend:
    if options.gateway is None:
        return _LocalBackend()
    from ._gateway import GatewayBackend

    return GatewayBackend(options.gateway, options.token)


def _expression_value(reply: dict[str, Any], key: str, limit: int) -> Any:
    """The JSON value of a user expression in an execute_reply: a literal str, never evaluated, and
    parsed only if it takes at most `limit` bytes parsed."""
    result = reply.get("user_expressions", {}).get(key, {})  # shaped by _messages.check
    if result.get("status") != "ok":
        raise SandboxError(f"{str(result.get('ename'))[:200]}: {str(result.get('evalue'))[:2000]}")
    try:
        text = ast.literal_eval(result["data"]["text/plain"])
        if not isinstance(text, str):
            raise ValueError("not text")
        if (cost := _codec.json_cost(text)) > limit:
            raise ValueError(_messages.too_big(cost))
        return json.loads(text)
    except (KeyError, TypeError, ValueError, SyntaxError, RecursionError) as exc:
        raise SandboxError(f"the sandbox answered an internal call with something malformed ({exc})") from None


class Sandbox:
    """Synchronous face of AsyncSandbox, for scripts and notebook cells. Starts on construction."""

    def __init__(self, **options: Any) -> None:
        self._async = AsyncSandbox(**options)
        _aio.run_sync(self._async.start())

    @classmethod
    def _wrap(cls, started: AsyncSandbox) -> Sandbox:
        sandbox = cls.__new__(cls)
        sandbox._async = started
        return sandbox

    def as_async(self) -> AsyncSandbox:
        """The AsyncSandbox behind this one (the same kernel), for async code such as the agents."""
        return self._async

    @property
    def options(self) -> SandboxOptions:
        return self._async.options

    @property
    def isolation(self) -> Isolation:
        return self._async.isolation

    @property
    def workdir(self) -> Path:
        return self._async.workdir

    def execute(self, code: str, timeout: float | None = None) -> Execution:
        return _aio.run_sync(self._async.execute(code, timeout))

    def push(self, **values: Any) -> None:
        _aio.run_sync(self._async.push(**values))

    def pull(self, names: Iterable[str]) -> dict[str, Any]:
        return _aio.run_sync(self._async.pull(names))

    def variables(self) -> dict[str, str]:
        return _aio.run_sync(self._async.variables())

    def register_function(self, name: str, fn: Callable[..., Any], doc: str | None = None) -> None:
        _aio.run_sync(self._async.register_function(name, fn, doc))

    def close(self) -> None:
        _aio.run_sync(self._async.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
