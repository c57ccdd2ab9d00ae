"""How jupyter_client starts a sandbox kernel: the kernelspec's provisioner, and a faster ready check.

`SandboxProvisioner` is named in the kernelspec's metadata, so every KernelManager that starts the
kernelspec uses it: this package's local backend and a Jupyter Kernel Gateway alike. Everything but
the launch itself (connection file, ports, signals, kill, restart, polling) is jupyter_client's
LocalProvisioner, over the `ZygoteChild` that stands in for a Popen. Where the zygote cannot be
used, the kernel is started the usual way and the reason is logged and reported in the kernel's
`Isolation`.

`ReadyClient` is the local backend's kernel client: ready as soon as the kernel has answered,
without a heartbeat thread, on its kernel manager's zmq context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import time
from queue import Empty
from typing import Any

import traitlets
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from . import _zygote
from ._spec import LAUNCH_ENV

_KILL_GRACE = 5.0  # seconds a killed kernel gets to be reported gone (jupyter_client's own wait)
_ASK_AGAIN = 1.0  # seconds between kernel_info requests to a kernel that has not answered yet
_ASK_AGAIN_ANSWERED = 0.02  # ... and to one that has, while its status has not come on IOPub


class SandboxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner whose kernels are forked from a pre-imported zygote when possible."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        streams = _stream_fds(kwargs)
        reason = _zygote.usable(cmd) or (
            None if streams else "stdout/stderr were asked for as something other than a file descriptor"
        )
        if reason is None and streams:
            try:
                child = await _zygote.spawn(cmd, env, cwd, *streams)
            except _zygote.ZygoteUnavailable as exc:
                reason = str(exc)
            else:
                self.process, self.pid, self.pgid = child, child.pid, None  # signals go to its pidfd
                self.cwd = pathlib.Path(cwd)
                return self.connection_info
        self.log.warning("agent-sandbox: starting the kernel without the zygote: %s", reason)
        return await super().launch_kernel(cmd, **{**kwargs, "env": {**env, LAUNCH_ENV: reason}})

    async def kill(self, restart: bool = False) -> None:
        # jupyter_client polls every 0.1 s after a kill until the kernel is gone: a SIGKILLed child
        # is gone within milliseconds, and the zygote says so.
        await super().kill(restart)
        child = self.process
        if isinstance(child, _zygote.ZygoteChild):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(child.exited(), _KILL_GRACE)

    async def wait(self) -> int | None:
        # LocalProvisioner polls every 0.1 s; the zygote reports the exit: a closing sandbox returns
        # as soon as its kernel is gone.
        child = self.process
        if isinstance(child, _zygote.ZygoteChild):
            status = await child.exited()
            self.process = None
            return status
        return await super().wait()


def _stream_fds(kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The descriptors the kernel's stdout and stderr go to (this process's own when not given)."""
    fds = []
    for name, default in (("stdout", 1), ("stderr", 2)):
        stream = kwargs.get(name)
        if stream is None:
            fds.append(default)
        elif isinstance(stream, int) and stream >= 0:
            fds.append(stream)
        elif hasattr(stream, "fileno"):
            fds.append(stream.fileno())
        else:  # subprocess.PIPE and the like: only a Popen can make those
            return None
    return fds[0], fds[1]


class ReadyClient(AsyncKernelClient):  # type: ignore[misc]
    """An AsyncKernelClient whose wait_for_ready returns once the kernel has answered on both channels.

    jupyter_client's checks the same (a kernel_info reply on shell, then a message on IOPub: a
    subscriber misses what is published before it is connected, and a just-started client often
    is not yet), but asks again only every 1 s and then waits for 0.2 s of IOPub silence, on every
    kernel start. Here a kernel that has answered is asked again every 20 ms until the idle status
    of one of the requests arrives on IOPub, which proves it connected. Messages left over answer
    other requests and are ignored by the sandbox's reader.
    """

    @traitlets.default("context")
    def _context_default(self) -> zmq.asyncio.Context:
        # The kernel manager's context: one zmq I/O thread for all of this process's sandboxes, which
        # retries connecting every 10 ms. A context of the client's own (jupyter_client's default)
        # costs two threads per sandbox and retries every 100 ms: a kernel that binds its sockets
        # just after the client connects was found ~0.1 s late.
        context = getattr(self.parent, "context", None)
        return context if isinstance(context, zmq.asyncio.Context) else super()._context_default()

    def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = False,
                       control: bool = True) -> None:
        # No heartbeat (a thread and a socket per sandbox, pinging every 3 s): whether the kernel
        # lives is asked of its KernelManager, whose provisioner knows its exit.
        super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control)

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        poller = zmq.asyncio.Poller()
        for channel in (self.shell_channel, self.iopub_channel):
            poller.register(channel.socket, zmq.POLLIN)
        asked, replied, idle = {self.kernel_info()}, set(), set()
        next_ask = time.monotonic() + _ASK_AGAIN
        while not replied & idle:
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
            if now >= next_ask:
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                asked.add(self.kernel_info())
                next_ask = now + (_ASK_AGAIN_ANSWERED if replied else _ASK_AGAIN)
            await poller.poll(1000 * max(0.0, min(next_ask, deadline) - now))
            for msg in await _waiting(self.shell_channel):
                if msg["parent_header"].get("msg_id") in asked:
                    replied.add(msg["parent_header"]["msg_id"])
                    next_ask = min(next_ask, time.monotonic() + _ASK_AGAIN_ANSWERED)
            for msg in await _waiting(self.iopub_channel):
                if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    idle.add(msg["parent_header"].get("msg_id"))


async def _waiting(channel: Any) -> list[dict[str, Any]]:
    """The messages already waiting on a channel."""
    messages = []
    while True:
        try:
            messages.append(await channel.get_msg(timeout=0))
        except Empty:
            return messages
