"""How a sandbox kernel is launched: the kernelspec and the one variable that carries its settings."""

from __future__ import annotations

import sys
from typing import Any

CONFIG_ENV = "AGENT_KERNEL_SANDBOX"
KERNEL_NAME = "agent-sandbox"


def kernel_spec(python: str | None = None) -> dict[str, Any]:
    """The kernelspec (kernel.json contents) that starts a sandbox kernel."""
    return {
        "argv": [python or sys.executable, "-m", "agent_kernel.sandbox._launcher", "-f", "{connection_file}"],
        "display_name": "agent_kernel sandbox",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
    }
