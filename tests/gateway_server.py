"""A real Jupyter Kernel Gateway on 127.0.0.1, configured for sandbox kernels, for tests and benchmarks.

It runs as a subprocess (`python -m kernel_gateway`) on a free port with a random token, with the
`agent-sandbox` kernelspec installed in a private prefix and a private runtime folder, configured
as docs/gateway.md says: each kernel in a private folder over ipc, websocket without Nagle delays.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent_kernel.sandbox import install_kernelspec

_SERVER = "agent_kernel.sandbox._gateway_server"


class GatewayServer:
    """`with GatewayServer() as gw: Sandbox(gateway=gw.url, token=gw.token)`."""

    def __init__(self, *options: str) -> None:
        self.options = options  # extra gateway command-line options
        self.token = secrets.token_hex(16)
        self.url = ""
        self.folder = Path()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> GatewayServer:
        self.folder = Path(tempfile.mkdtemp(prefix="agent-kg-"))
        install_kernelspec(user=False, prefix=str(self.folder / "prefix"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "JUPYTER_PATH": str(self.folder / "prefix" / "share" / "jupyter"),
            "JUPYTER_RUNTIME_DIR": str(self.folder / "runtime"),
            "KG_AUTH_TOKEN": self.token,
        }
        command = [
            sys.executable, "-m", "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.kernel_manager_class={_SERVER}.SandboxMappingKernelManager",
            f"--KernelGatewayApp.kernel_websocket_connection_class={_SERVER}.SandboxWebsocketConnection",
            "--KernelSpecManager.allowed_kernelspecs=agent-sandbox",
            "--KernelGatewayApp.force_kernel_name=agent-sandbox",
            "--JupyterWebsocketPersonality.list_kernels=True",
            *self.options,
        ]
        log = open(self.folder / "gateway.log", "wb")  # noqa: SIM115 - the subprocess writes it until stop()
        self._process = subprocess.Popen(command, env=env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the kernel gateway exited ({self._process.returncode}):\n{self.log()[-3000:]}")
            try:
                self.get("/api/kernelspecs")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the kernel gateway did not answer within {timeout} s")

    @property
    def pid(self) -> int:
        """The gateway's process id (its kernels are its children)."""
        assert self._process is not None, "the gateway is not running"
        return self._process.pid

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def kernels(self) -> list[dict[str, Any]]:
        return self.get("/api/kernels")

    def log(self) -> str:
        return (self.folder / "gateway.log").read_text(errors="replace")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

