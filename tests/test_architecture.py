"""The package's structure, enforced: one error root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import agent_kernel
from agent_kernel.errors import AgentKernelError

# raised inside the sandbox kernel to the model's code: that program's error, not the host's
_NOT_HOST_ERRORS = {"HostFunctionError"}


def _modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(agent_kernel.__path__, "agent_kernel.")
            if info.name not in ("agent_kernel.__main__",)]


def _public_errors() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, Exception) and not issubclass(value, Warning)
                    and not attr.startswith("_")
                    and value.__module__ == name):
                found[attr] = value
    return found


def test_every_public_error_is_an_agent_kernel_error_listed_in_the_map() -> None:
    errors = _public_errors()
    assert {"ModelError", "SandboxError", "ToolArgumentError", "TransferError", "MCPToolError"} <= set(errors)
    outside = sorted(name for name, cls in errors.items()
                     if not issubclass(cls, AgentKernelError) and name not in _NOT_HOST_ERRORS)
    assert outside == []
    doc = agent_kernel.errors.__doc__ or ""
    unlisted = sorted(name for name in errors if name not in doc and name != "AgentKernelError")
    assert unlisted == []


def test_the_old_bases_still_catch_them() -> None:
    from agent_kernel.base_tools import URLNotAllowed
    from agent_kernel.models import ModelNotFound
    from agent_kernel.sandbox import SandboxError
    from agent_kernel.sandbox._codec import TransferError
    from agent_kernel.tools import ToolArgumentError

    assert issubclass(SandboxError, RuntimeError) and issubclass(SandboxError, AgentKernelError)
    assert issubclass(TransferError, ValueError) and issubclass(ToolArgumentError, ValueError)
    assert issubclass(URLNotAllowed, ValueError) and issubclass(ModelNotFound, AgentKernelError)
