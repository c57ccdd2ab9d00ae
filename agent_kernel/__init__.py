"""agent_kernel: say what you want in a notebook cell; an LLM agent does it in a restricted kernel.

Public names load lazily so that `%load_ext agent_kernel` and the sandbox's own kernel stay quick.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Sandbox": "agent_kernel.sandbox",
    "AsyncSandbox": "agent_kernel.sandbox",
    "SandboxPool": "agent_kernel.sandbox",
    "Execution": "agent_kernel.sandbox",
    "Isolation": "agent_kernel.sandbox",
    "Model": "agent_kernel.models",
    "ModelError": "agent_kernel.models",
    "Tool": "agent_kernel.tools",
    "tool": "agent_kernel.tools",
    "as_tool": "agent_kernel.tools",
    "ToolError": "agent_kernel.tools",
    "CodeAgent": "agent_kernel.agents",
    "ToolCallingAgent": "agent_kernel.agents",
    "WebSearchTool": "agent_kernel.base_tools",
    "VisitWebpageTool": "agent_kernel.base_tools",
    "PythonInterpreterTool": "agent_kernel.base_tools",
    "mcp_tools": "agent_kernel.mcp",
    "Decision": "agent_kernel.review",
    "Run": "agent_kernel.memory",
    "Usage": "agent_kernel.memory",
}

__all__ = [*_PUBLIC, "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'agent_kernel' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)
