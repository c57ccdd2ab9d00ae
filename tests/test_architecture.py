"""The package's structure, enforced: no import cycle, one error root, documented constructors.

The layers themselves (which module may import which) are import-linter's contract in
pyproject.toml, run by .ci/run; this file checks what a layers contract cannot: that no two
modules import each other through any path, whatever the layers say.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import agent_kernel
from agent_kernel.errors import AgentKernelError

# raised inside the sandbox kernel to the model's code: that program's error, not the host's
_NOT_HOST_ERRORS = {"HostFunctionError"}


PACKAGE = Path(agent_kernel.__file__).parent


def _module_names() -> dict[str, Path]:
    """Every module of the package by dotted name; a package is named by its `__init__.py`."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every import statement in its source: at the
    top, inside functions and under `if TYPE_CHECKING:` alike (a cycle is a cycle even when it is
    deferred).

    How a package counts: a package's `__init__.py` is a module like any other, whose edges are its
    own imports. Importing `agent_kernel.x.y` is an edge to `agent_kernel.x.y` only, not to the
    parent packages Python initialises first (every module would otherwise be in a cycle with an
    `__init__` that imports its children). `from agent_kernel.x import y` is an edge to the module
    `agent_kernel.x.y` when y is one, else to `agent_kernel.x` (a name its `__init__` defines).
    A package's lazy public names (its `_PUBLIC` map, loaded on first use by `__getattr__`) are
    imports too: an edge to each module named there.
    """
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if (is_package and isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "_PUBLIC" for t in node.targets)):
                for value in node.value.values:  # "agent_kernel.models", or "._client" relative to the package
                    assert isinstance(value, ast.Constant) and isinstance(value.value, str)
                    targets.append(name + value.value if value.value.startswith(".") else value.value)
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_any_modules() -> None:
    graph = import_graph()
    assert {"agent_kernel.agents._loop", "agent_kernel.sandbox._client", "agent_kernel"} <= set(graph)
    assert "agent_kernel.display" in graph["agent_kernel.memory"]  # reads function-level imports too
    assert "agent_kernel.sandbox._client" in graph["agent_kernel.sandbox"]  # and lazy public names
    found = cycles(graph)
    assert found == [], "\n".join(
        " <-> ".join(c) + ":\n" + "\n".join(f"    {m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)


def test_the_rest_of_the_package_reaches_the_sandbox_only_through_its_public_names() -> None:
    graph = import_graph()
    private = sorted(f"{module} -> {target}" for module, targets in graph.items()
                     if not module.startswith("agent_kernel.sandbox")
                     for target in targets if target.startswith("agent_kernel.sandbox._"))
    assert private == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


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


def _constructors() -> list[type]:
    from agent_kernel import base_tools, models, review
    from agent_kernel.agents import AgentOptions, CodeAgent, Limits, MultiStepAgent, ToolCallingAgent
    from agent_kernel.sandbox import AsyncSandbox, Sandbox, SandboxOptions, SandboxPool

    return [models.Model, MultiStepAgent, CodeAgent, ToolCallingAgent, AgentOptions, Limits, Sandbox, AsyncSandbox,
            SandboxPool, SandboxOptions, base_tools.WebSearchTool, base_tools.VisitWebpageTool,
            base_tools.PythonInterpreterTool, review.Decision]


def test_public_constructors_document_every_argument() -> None:
    undocumented = {}
    for cls in _constructors():
        doc = (cls.__doc__ or "") + (cls.__init__.__doc__ or "")  # type: ignore[misc]
        params = [p for p in inspect.signature(cls).parameters]
        missing = [p for p in params if p not in doc]
        if "Args:" not in doc or missing:
            undocumented[cls.__name__] = missing or ["Args:"]
    assert undocumented == {}
