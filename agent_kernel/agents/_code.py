"""CodeAgent: the model writes Python, a restricted Jupyter kernel runs it, the outputs come back."""

from __future__ import annotations

import ast
import base64
import binascii
import inspect
import re
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from .. import _aio
from ..memory import ActionStep, ToolCall
from ..sandbox._records import Execution
from ..tools import Tool
from . import _prompts
from ._loop import NO_ANSWER, Message, MultiStepAgent, truncate

_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)(?:\n[ \t]*```|\Z)", re.S)
_CODE_TAG = re.compile(r"<code>\s*(?P<code>.*?)\s*(?:</code>|\Z)", re.S)
_PYTHON_LANGS = {"", "python", "py", "python3", "ipython", "pycon"}
_STOP = ["\n```\n"]  # the closing fence: the model would go on to invent the output
_TRACEBACK_LINES = 30


def extract_code(text: str) -> tuple[str | None, str]:
    """(code, thought) from a reply: a python/bare fence, <code> tags, or a bare snippet that parses."""
    for match in _FENCE.finditer(text):
        if match["lang"].lower() in _PYTHON_LANGS and match["code"].strip():
            return match["code"].strip("\n"), _thought(text[: match.start()] + text[match.end() :])
    match = _CODE_TAG.search(text)
    if match and match["code"].strip():
        return match["code"], _thought(text[: match.start()] + text[match.end() :])
    stripped = text.strip()
    if stripped and _is_code(stripped):
        return stripped, ""
    return None, _thought(text)


def _thought(text: str) -> str:
    return re.sub(r"^\s*Thought:\s*", "", text.strip())


def _is_code(text: str) -> bool:
    """Python that does something: prose like "Done." or a lone name parses, but is not an action."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Name, ast.Constant)))
               for node in tree.body)


class CodeAgent(MultiStepAgent):
    """Solves a task by writing Python actions that run in a restricted sandbox kernel.

    Tools are called from sandbox code but run in this process: their state (clients, API keys)
    never enters the sandbox. `variables` are copied into the sandbox by the codec.
    """

    kind = "code"
    default_description = ("A Python agent with its own kernel: give it a task in plain language "
                           "(data analysis, computation); it returns the result.")
    _max_steps_prompt: ClassVar[str] = _prompts.MAX_STEPS_CODE

    def __init__(
        self,
        model: Any,
        tools: Iterable[Any] = (),
        *,
        imports: Iterable[str] = (),
        additional_authorized_imports: Iterable[str] | None = None,
        executor_type: str = "local",
        sandbox: Any = None,
        max_steps: int = 10,
        planning_interval: int | None = None,
        instructions: str | None = None,
        final_answer_checks: Iterable[Callable[..., Any]] = (),
        step_callbacks: Iterable[Callable[..., Any]] = (),
        max_observation_chars: int = 10_000,
        keep_steps: int = 8,
        name: str | None = None,
        description: str | None = None,
        add_base_tools: bool = False,
        **sandbox_options: Any,
    ) -> None:
        _check_executor(executor_type)
        if additional_authorized_imports is not None:  # the name other agent libraries use
            if imports:
                raise TypeError("pass imports=[...] or its alias additional_authorized_imports=[...], not both")
            imports = additional_authorized_imports
        super().__init__(
            model, tools, max_steps=max_steps, planning_interval=planning_interval, instructions=instructions,
            final_answer_checks=final_answer_checks, step_callbacks=step_callbacks,
            max_observation_chars=max_observation_chars, keep_steps=keep_steps, name=name, description=description,
            add_base_tools=add_base_tools,
        )
        from ..sandbox import AsyncSandbox, Sandbox

        unknown = set(sandbox_options) - set(inspect.signature(AsyncSandbox).parameters)
        if unknown:
            raise TypeError(f"unknown CodeAgent option(s) {sorted(unknown)}; sandbox options are "
                            f"{sorted(set(inspect.signature(AsyncSandbox).parameters) - {'imports'})}")
        if sandbox is not None and sandbox_options:
            raise TypeError(f"pass sandbox options {sorted(sandbox_options)} to the sandbox you give, not to the agent")
        self.imports = tuple(imports)
        self._sandbox_options = sandbox_options
        self._sandbox = sandbox.as_async() if isinstance(sandbox, Sandbox) else sandbox
        self._owns_sandbox = sandbox is None
        self._registered: set[str] = set()
        self._calls: list[ToolCall] = []  # where tool calls from the running action are recorded

    @property
    def sandbox(self) -> Any:
        """The AsyncSandbox the actions run in (None before the first run)."""
        return self._sandbox

    def system_prompt(self) -> str:
        from ..sandbox._kernel_side import DEFAULT_IMPORTS

        if "*" in self.imports:
            imports = "any installed module"
        else:
            imports = ", ".join(sorted(DEFAULT_IMPORTS | set(self.imports)))
        stubs = [_prompts.FINAL_ANSWER_SIGNATURE, *(t.python_signature() for t in self.tools.values())]
        signatures = "\n\n".join(stubs)
        network = "" if self._sandbox_options.get("network") else _prompts.NO_NETWORK
        return _prompts.CODE_SYSTEM.format(imports=imports, network=network, signatures=signatures)

    async def _prepare(self, variables: dict[str, Any], reset: bool) -> dict[str, str]:
        if reset and self._owns_sandbox and self._sandbox is not None:
            old, self._sandbox = self._sandbox, None
            self._registered.clear()
            await old.close()
        if self._sandbox is None:
            from ..sandbox import AsyncSandbox

            self._sandbox = AsyncSandbox(imports=self.imports, **self._sandbox_options)
        await self._sandbox.start()
        for name, t in self.tools.items():
            if name not in self._registered:
                await self._sandbox.register_function(name, self._recorded(t), doc=t.description)
                self._registered.add(name)
        if variables:
            await self._sandbox.push(**variables)
        return await super()._prepare(variables, reset)

    async def _request(self, messages: list[Message], on_delta: Callable[[str], None] | None, final: bool) -> Any:
        # The model sends `stop` only where the provider takes it, and cuts the text itself otherwise.
        return await self.model.agenerate(messages, stop=_STOP, on_delta=on_delta)

    async def _act(self, step: ActionStep, reply: Any, final: bool) -> Any:
        step.code, step.thought = extract_code(step.model_output)
        if step.code is None:
            step.error = "no code in the reply"
            step.observation = _prompts.CODE_FORMAT_REMINDER
            return NO_ANSWER
        self._calls = step.tool_calls
        execution = await self._sandbox.execute(step.code)
        step.execution = execution
        if execution.error is not None:
            step.error = f"{execution.error.name}: {execution.error.value}"
        step.observation = truncate(render_observation(execution), self.max_observation_chars)
        return execution.final_answer if execution.has_final_answer else NO_ANSWER

    def _recorded(self, t: Tool) -> Callable[..., Awaitable[Any]]:
        """The host side of a tool called from sandbox code. Each call is noted in the running step,
        so the run shows it and an exported notebook can replay its result without the tool."""

        async def call(*args: Any, **kwargs: Any) -> Any:
            names = list((t.parameters or {}).get("properties", {}))
            positional = {names[i] if i < len(names) else f"arg{i}": a for i, a in enumerate(args)}
            record = ToolCall(t.name, {**positional, **kwargs})
            self._calls.append(record)
            try:
                record.result = await t.acall(*args, **kwargs)
            except Exception as exc:  # the sandbox code sees it as HostFunctionError
                record.error = f"{type(exc).__name__}: {exc}"
                raise
            return record.result

        return call

    def _step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        if step.code is None:
            said = step.model_output
        else:  # the stop sequence may have eaten the closing fence; show the format we ask for
            said = f"```python\n{step.code}\n```"
            if step.thought:
                said = f"Thought: {step.thought}\n{said}"
        return [{"role": "assistant", "content": said or "(empty reply)"},
                {"role": "user", "content": self._observation_text(step.observation)}]

    def _step_summary(self, step: ActionStep) -> str:
        if step.code is None:
            return f"- step {step.index}: no code"
        code = "; ".join(line.strip() for line in step.code.splitlines() if line.strip())
        code = code if len(code) <= 160 else code[:157] + "..."
        outcome = f"error {step.error}" if step.error else "ok"
        return f"- step {step.index}: `{code}` -> {outcome[:160]}"

    # -- lifecycle -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the sandbox kernel this agent started (one passed in is left to its owner)."""
        await super().aclose()
        if self._owns_sandbox and self._sandbox is not None:
            old, self._sandbox = self._sandbox, None
            self._registered.clear()
            await old.close()


_EXECUTORS = {
    "local": "the restricted sandbox kernel on this machine (OS isolation layers)",
    "gateway": "the same kernel started by a Jupyter Kernel/Enterprise Gateway (containers, Kubernetes)",
}


def _check_executor(name: str) -> None:
    """`executor_type=` as other agent libraries spell it; ours are the local sandbox and the gateway."""
    if name == "local":
        return
    if name == "gateway":
        raise ValueError("executor_type='gateway' needs the gateway sandbox backend, which this version does not "
                         "have yet; use executor_type='local' (the default)")
    listed = "; ".join(f"{k!r}: {v}" for k, v in _EXECUTORS.items())
    raise ValueError(f"unknown executor_type {name!r}. The executors are {listed}. To run the sandbox on a "
                     "container platform (Docker, Kubernetes, a cloud sandbox service), run a Jupyter gateway "
                     "there with the `agent-sandbox` kernelspec (`python -m agent_kernel install-kernelspec`) "
                     "and use executor_type='gateway'.")


def render_observation(execution: Execution) -> str:
    """What the model learns from an execution, in output order: text, notes for rich displays, error."""
    parts: list[str] = []
    for output in execution.outputs:
        kind = output["output_type"]
        if kind == "stream":
            parts.append(output["text"].rstrip("\n"))
        elif kind in ("display_data", "execute_result"):
            note = _display_note(output.get("data", {}))
            parts.append(f"Out: {note}" if kind == "execute_result" else note)
    if execution.truncated:
        parts.append("[the output was too long; the middle was cut]")
    if execution.error is not None:
        lines = str(execution.error).strip().splitlines()
        if len(lines) > _TRACEBACK_LINES:
            lines = [f"[... {len(lines) - _TRACEBACK_LINES} traceback lines cut ...]", *lines[-_TRACEBACK_LINES:]]
        parts.append("Error:\n" + "\n".join(lines))
    if execution.restarted:
        parts.append("[the kernel was restarted: every variable and import is gone; redo what you need]")
    if execution.has_final_answer:
        parts.append(f"final_answer: {_short_repr(execution.final_answer)}")
    return "\n".join(p for p in parts if p) or "(the code ran and printed nothing)"


def _display_note(data: dict[str, Any]) -> str:
    images = [m for m in data if m.startswith("image/")]
    if images:
        mime = images[0]
        size = _png_size(data[mime]) if mime == "image/png" else None
        return f"[displayed {mime}{f' {size[0]}x{size[1]}' if size else ''}]"
    text = data.get("text/plain", "")
    if isinstance(text, list):
        text = "".join(text)
    if text:
        return text.rstrip("\n")
    return f"[displayed {', '.join(data) or 'nothing'}]"


def _png_size(encoded: Any) -> tuple[int, int] | None:
    """Width and height from the PNG header, without decoding the image."""
    try:
        head = base64.b64decode(str(encoded)[:44])
    except (binascii.Error, ValueError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


def _short_repr(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

