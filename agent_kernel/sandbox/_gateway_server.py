"""Runs inside a Jupyter Kernel Gateway that hosts sandbox kernels; named in the gateway's config:

    jupyter kernelgateway \\
        --KernelGatewayApp.kernel_manager_class=agent_kernel.sandbox._gateway_server.SandboxMappingKernelManager \\
        --KernelGatewayApp.kernel_websocket_connection_class=agent_kernel.sandbox._gateway_server.SandboxWebsocketConnection

A stock gateway writes every kernel's connection file (its HMAC key) into one shared runtime
folder and reaches kernels over TCP. A sandbox kernel gets read-write access to its connection
file's folder (for its ipc sockets) and, without network, lives in a network namespace the gateway
cannot reach over TCP. So here each kernel gets a private 0700 folder of its own for its connection
file and ipc sockets (and, as the launcher decides, its working and transfer folders), removed
when the kernel is deleted. The settings a client sends are checked against the operator's policy
(no network, no host folders, a memory cap, unless configured otherwise); folders are never the
client's to choose. And the websocket sends each kernel message at once: with Nagle's
algorithm on, every message after the first of an execution waited for a delayed ACK (~40 ms).

The gateway's own work per kernel message is kept small: its activity tracking reads the two
fields it needs instead of checking and fully decoding every IOPub message, and its debug log calls
(one per message) no longer build records its handlers then drop.

Kernels start through the kernelspec's provisioner (forked from the zygote, see _zygote.py) like
local ones, and a deleted or restarted kernel is killed rather than asked to exit: a sandbox
kernel has nothing a graceful shutdown would save, which took ~0.3 s of every DELETE.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.session import DELIM
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.connection.channels import (
    ZMQChannelsWebsocketConnection,
)
from kernel_gateway.services.kernels.manager import KernelGatewayIOLoopKernelManager, SeedingMappingKernelManager
from tornado.web import HTTPError
from traitlets import Bool, Integer, default

from ._spec import CONFIG_ENV, GATEWAY_CONFIG_ENV

_HOST_CHOSEN = ("workdir", "runtime_dir", "transfer_dir")  # paths on this machine: the launcher picks them


class SandboxMappingKernelManager(SeedingMappingKernelManager):
    """The gateway's kernel manager: SandboxKernelManager for each kernel, cheaper activity tracking."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # traitlets leaves the application's logger at DEBUG and filters in its handlers: each
        # debug call (one per kernel message) built a record for nothing.
        log = self.log
        levels = [handler.level for handler in getattr(log, "handlers", ())]
        if levels and all(levels) and not log.propagate:
            log.setLevel(min(levels))

    def _kernel_manager_class_default(self) -> str:
        return f"{__name__}.SandboxKernelManager"

    def start_watching_activity(self, kernel_id: str) -> None:
        """jupyter_server's activity tracking, reading only the message type, its parent's type and
        a status's state: it checked the signature of and decoded (dates included) every IOPub
        message. Nothing here is acted on but the kernel's activity, which the kernel could claim anyway."""
        kernel = self._kernels[kernel_id]
        kernel.reason = ""
        kernel.last_activity = utcnow()
        kernel._activity_stream = kernel.connect_iopub()
        tracked = self.track_message_type

        def record_activity(frames: list[bytes]) -> None:
            try:
                header = frames.index(DELIM) + 2  # after the identities, the delimiter and the signature
                msg_type = json.loads(frames[header])["msg_type"]
                parent_type = json.loads(frames[header + 1]).get("msg_type")
                state = json.loads(frames[header + 3])["execution_state"] if msg_type == "status" else None
            except (ValueError, KeyError, TypeError, IndexError):
                return  # not a Jupyter message: no activity of a kernel
            if tracked(msg_type) or tracked(parent_type) or kernel.execution_state == "busy":
                self.last_kernel_activity = kernel.last_activity = utcnow()
            if state is not None:
                if tracked(parent_type):
                    kernel.execution_state = state
                elif kernel.execution_state == "starting" and state != "starting":
                    kernel.execution_state = "idle"  # as jupyter_server: untracked replies after the start mean idle

        kernel._activity_stream.on_recv(record_activity)


class SandboxKernelManager(KernelGatewayIOLoopKernelManager):
    """The gateway's per-kernel manager, with a private folder and ipc transport for each kernel."""

    allow_network = Bool(False, config=True, help="Let clients ask for network access (network=True).")
    allow_read_paths = Bool(False, config=True, help="Let clients ask to read folders of the gateway host.")
    max_memory = Integer(2 * 1024**3, config=True, help="Bytes of memory one kernel may use at most.")

    def __init__(self, **kwargs: Any) -> None:
        shared = kwargs.get("connection_file")
        private = Path(shared).with_suffix("") if shared else None  # <runtime>/kernel-<id>.json -> kernel-<id>/
        if private is not None:
            private.mkdir(mode=0o700, exist_ok=True)
            kwargs["connection_file"] = str(private / "kernel.json")
        super().__init__(**kwargs)
        self._private_dir = private
        # A new kernel binds its sockets some tens of ms after its start: retry connecting every
        # 10 ms (backing off to 1 s for a kernel that is gone) rather than zmq's fixed 100 ms.
        self.context.setsockopt(zmq.RECONNECT_IVL, 10)
        self.context.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> Any:
        env = kw["env"]
        env.pop(CONFIG_ENV, None)  # only the checked settings below reach the launcher
        env[GATEWAY_CONFIG_ENV] = json.dumps(self._checked(env.get(GATEWAY_CONFIG_ENV)))
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    def _checked(self, sent: str | None) -> dict[str, Any]:
        """The client's sandbox settings within this gateway's policy; outside it the create fails (403)."""
        try:
            settings = json.loads(sent or "{}")
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            raise HTTPError(400, f"{GATEWAY_CONFIG_ENV} must be a JSON object of sandbox settings")
        if settings.get("network") and not self.allow_network:
            raise HTTPError(403, "this gateway does not allow sandboxes with network access "
                             "(SandboxKernelManager.allow_network is False)")
        if settings.get("read_paths") and not self.allow_read_paths:
            raise HTTPError(403, "this gateway does not let sandboxes read its folders "
                             "(SandboxKernelManager.allow_read_paths is False)")
        memory = settings.get("memory_bytes")
        if memory is not None and (type(memory) is not int or memory > self.max_memory):
            raise HTTPError(403, f"memory={memory!r} bytes is over this gateway's limit of {self.max_memory} bytes "
                             "(SandboxKernelManager.max_memory)")
        checked = {k: v for k, v in settings.items() if k not in _HOST_CHOSEN}
        return checked | {"memory_bytes": memory or self.max_memory, "inline": True}

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        await super()._async_shutdown_kernel(now=True, restart=restart)  # see the module docstring

    shutdown_kernel = _async_shutdown_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart)
        if not restart and self._private_dir is not None:  # off the event loop: every other kernel waits on it
            await asyncio.to_thread(shutil.rmtree, self._private_dir, ignore_errors=True)


class SandboxWebsocketConnection(ZMQChannelsWebsocketConnection):
    """The channels websocket with TCP_NODELAY: an execution's replies are several small messages."""

    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        return super().connect()
