"""The local backend: a kernel process on this machine, started by jupyter_client over ipc transport
in a private 0700 runtime folder, its channels read straight off the zmq sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from pathlib import Path
from typing import Any, cast

import zmq
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from . import _messages
from ._base import SandboxError, SandboxOptions
from ._messages import Message
from ._spec import CONFIG_ENV, KERNEL_NAME, kernel_spec

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# zmq's option and flag numbers as plain ints: its IntEnum arithmetic costs microseconds per use.
_EVENTS, _FD, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.FD), int(zmq.POLLIN), int(zmq.NOBLOCK)


class _SpecManager(KernelSpecManager):
    """Knows the sandbox kernel without it having to be installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == KERNEL_NAME:
            return KernelSpec(resource_dir="", **kernel_spec())
        return super().get_kernel_spec(kernel_name)


class LocalBackend:
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
            provisioner: Any = self.km.provisioner  # the kernelspec's SandboxProvisioner
            output = provisioner.output() if provisioner is not None else ""
            raise SandboxError(f"{exc}. Kernel output: {output or '(none)'}") from exc
        channels = (self._kc.iopub_channel.socket, self._kc.shell_channel.socket, self._kc.stdin_channel.socket)
        # From here on the channels are used through plain (blocking) shadows of the asyncio sockets,
        # and the event loop watches their file descriptors directly: an asyncio socket makes a
        # future and a poller registration per read, half of the host's cost of a round trip.
        self._sockets = tuple(zmq.Socket.shadow(sock.underlying) for sock in channels)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(cast(int, sock.get(_FD)), self._on_readable, sock)

    def _on_readable(self, sock: zmq.Socket) -> None:
        # zmq's descriptor is edge-triggered: reading EVENTS re-arms it, and says whether a message waits.
        if cast(int, sock.get(_EVENTS)) & _POLLIN and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if not sock.closed:
                loop.remove_reader(cast(int, sock.get(_FD)))
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
        while batch < _messages.MAX_BATCH and cast(int, sock.get(_EVENTS)) & _POLLIN:  # cheaper than a zmq.Again per empty socket
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
        if any(cast(int, sock.get(_EVENTS)) & _POLLIN for sock in self._sockets):
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()

        def expire() -> None:
            if not waiter.done():
                waiter.set_result(False)

        timer = loop.call_later(timeout, expire)
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
        and `aclose` runs on the sandbox's loop when that loop runs again (at exit it may not: the
        process's end then closes the channels)."""
        km, loop = self.km, self._loop
        provisioner: Any = km.provisioner if km is not None else None  # a SandboxProvisioner
        process = provisioner.process if provisioner is not None else None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
        if km is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to let go on it
                loop.call_soon_threadsafe(_close_abandoned, self)

    async def aclose(self) -> None:
        if self._kc is not None:
            self._unwatch()
            self._kc.stop_channels()
            self._kc = None
        if self.km is not None:
            km, self.km = self.km, None
            await km.shutdown_kernel(now=True)


_abandoned: set[asyncio.Task[None]] = set()  # closes in progress of dropped sandboxes, held until done


def _close_abandoned(backend: LocalBackend) -> None:
    task = asyncio.ensure_future(backend.aclose())
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


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
