"""How a sandbox kernel is launched: the kernelspec and the variables that carry its settings."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFIG_ENV = "AGENT_KERNEL_SANDBOX"
GATEWAY_CONFIG_ENV = "KERNEL_AGENT_SANDBOX"  # a gateway forwards only KERNEL_* variables from its clients
LAUNCH_ENV = "AGENT_KERNEL_SANDBOX_LAUNCH"  # why a kernel was started by exec rather than by the zygote
GATEWAY_URL_ENV = "JUPYTER_GATEWAY_URL"  # jupyter_server's gateway client reads the same
KERNEL_NAME = "agent-sandbox"
PROVISIONER_NAME = "agent-sandbox-provisioner"  # entry point in jupyter_client.kernel_provisioners


def kernel_spec(python: str | None = None) -> dict[str, Any]:
    """The kernelspec (kernel.json contents) that starts a sandbox kernel.

    Its provisioner (an entry point of this package, so any Jupyter server or gateway that can
    import agent_kernel has it) forks kernels from a pre-imported zygote (_zygote.py), or runs
    `argv` where it cannot.
    """
    return {
        "argv": [python or sys.executable, "-m", "agent_kernel.sandbox._launcher", "-f", "{connection_file}"],
        "display_name": "agent_kernel sandbox",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False, "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": {}}},
    }


def install_kernelspec(user: bool = True, prefix: str | None = None, missing_only: bool = False) -> str | None:
    """Install the `agent-sandbox` kernelspec (for this Python) so a Jupyter server, nbclient or a
    gateway can start sandboxes; its folder. `missing_only`: leave one already installed (None)."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager()
    if missing_only and KERNEL_NAME in specs.find_kernel_specs():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        return specs.install_kernel_spec(tmp, KERNEL_NAME, user=user, prefix=prefix)


def gateway_url(given: str | None) -> str | None:
    """The gateway sandboxes run on: the one given, else $JUPYTER_GATEWAY_URL; None: a local kernel."""
    return given or os.environ.get(GATEWAY_URL_ENV) or None
