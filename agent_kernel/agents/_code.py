"""CodeAgent: the model writes Python, a restricted Jupyter kernel runs it, the outputs come back."""

from __future__ import annotations

import ast
import base64
import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from .._safe import image_base64
from ..memory import ActionStep, Run, Step, TaskStep, ToolCall
from ..observation import png_size, render_observation
from ..sandbox import Execution, gateway_url
from ..tools import Tool
from . import _prompts
from ._context import Message, observation_text, truncate
from ._loop import NO_ANSWER, MultiStepAgent
from ._options import AgentOptions

if TYPE_CHECKING:
    from ..sandbox import Sandbox, SandboxLike, SandboxPool

_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)(?:\n[ \t]*```|```[ \t]*$|\Z)", re.S | re.M)
_CODE_TAG = re.compile(r"<code>\s*(?P<code>.*?)\s*(?:</code>|\Z)", re.S)
_PYTHON_LANGS = {"", "python", "py", "python3", "ipython", "pycon"}
_STOP = ["\n```\n"]  # the closing fence: the model would go on to invent the output
# The step format, for models that can be held to a grammar (llama.cpp's GBNF): a thought, then one
# python block. A small model then cannot answer in prose, hallucinate an output, or forget the code;
# the thought is one line of at most 300 characters (the 0.5B model, unbounded, repeated one number
# until the reply's token limit). No line of code holds three backticks: the 1.5B model closed a block
# at the end of its last line ("final_answer(x)```"), which then ran as code.
STEP_GRAMMAR = r"""
root ::= "Thought: " thought "\n```python\n" line+ "```" "\n"?
thought ::= [^\n`]{1,300}
line ::= ([^`\n] | "`" [^`\n] | "``" [^`\n])* ("`" | "``")? "\n"
"""
MAX_IMAGES = 3  # figures of one step sent to a model that can see: the last few
IMAGE_MAX_SIDE = 768  # pixels; larger figures are scaled down (cheaper, and enough to read a plot)
_MAX_DECODE_PIXELS = 40_000_000  # a PNG claiming more is not decoded at all (decompression bombs)


def extract_code(text: str) -> tuple[str | None, str]:
    """(code, thought) from a reply: a python/bare fence, <code> tags, or a bare snippet that parses."""
    for match in _FENCE.finditer(text):
        if match["lang"].lower() in _PYTHON_LANGS and match["code"].strip():
            return match["code"].strip("\n"), _thought(text[: match.start()] + text[match.end() :])
    tagged = _CODE_TAG.search(text)
    if tagged and tagged["code"].strip():
        return tagged["code"], _thought(text[: tagged.start()] + text[tagged.end() :])
    stripped = text.strip()
    if stripped and _is_code(stripped):
        return stripped, ""
    return None, _thought(text)


def shadowed_tools(code: str, names: Iterable[str]) -> list[str]:
    """The tool names (and `final_answer`) that `code` binds at module level: a def, class, import-as,
    assignment, for/with target, walrus or del of one would replace the real tool in the kernel (small
    models copy the prompt's `def tool(...): ...` stubs). Code that does not parse is left to the kernel."""
    protected = {*names, "final_answer"}
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    bound: list[str] = []
    for node in _module_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.append(node.id)
        elif isinstance(node, ast.Global):
            bound += node.names
    return sorted({name for name in bound if name in protected})


def typed_answer(code: str) -> str | None:
    """The literal that a `final_answer(...)` call in `code` is given, as written ("'2024-06'"): a value
    the model typed from an output it read, where it could pass what computed it. None when the answer
    is a name or an expression."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "final_answer":
            given = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "answer")]
            if given and _literal(given[0]):
                return ast.unparse(given[0])
    return None


def grouped_by(codes: Iterable[str], group: str) -> str | None:
    """The last name the code assigned a groupby over `group` to (`total = df.groupby('country')[...].sum()`
    for "country"), or None. Plural and case are ignored ("countries" is not matched: rare)."""
    found = None
    word = group.lower().removesuffix("s")
    for code in codes:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            calls = [c for c in ast.walk(node.value) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                     and c.func.attr == "groupby"]
            if any(word in ast.unparse(arg).lower() for c in calls for arg in [*c.args, *(k.value for k in c.keywords)]):
                found = node.targets[0].id
    return found


def _literal(node: ast.expr | None) -> bool:
    """A number or text written out, or a tuple, list or dict of them (not True, False or None)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _literal(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return bool(node.values) and all(_literal(k) and _literal(v) for k, v in zip(node.keys, node.values))
    return False


def _module_level(body: list[ast.stmt]) -> Iterable[ast.AST]:
    """Every node whose bindings land in the kernel's namespace: the top level and its blocks (if, for,
    try, with); inside a function or class only its decorators and `global` statements count."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack += node.decorator_list
            stack += [n for n in ast.walk(node) if isinstance(n, ast.Global)]
        elif isinstance(node, ast.Lambda):
            continue
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            stack += [g.iter for g in node.generators]  # comprehension targets are local
        else:
            stack += list(ast.iter_child_nodes(node))


def _thought(text: str) -> str:
    return re.sub(r"^\s*Thought:\s*", "", text.strip())


_LABEL = re.compile(r"^[ \t*_#]*(?:thought|final answer|answer)[ \t*_]*:[ \t*_]*", re.I | re.M)
_FINAL_LABEL = re.compile(r"^[ \t*_#]*final answer[ \t*_]*:", re.I | re.M)


def prose_answer(text: str) -> str:
    """A reply in words taken as the answer: what follows its last "Final answer:" label if it has
    one, else the whole reply, without "Thought:" / "Answer:" labels."""
    labelled = list(_FINAL_LABEL.finditer(text))
    if labelled:
        text = text[labelled[-1].start():]
    return _LABEL.sub("", text).strip().strip("*").strip()


def _observed(memory: list[Step]) -> bool:
    """Whether code of the current run (the steps since its task) ran and its output was seen."""
    for step in reversed(memory):
        if isinstance(step, TaskStep):
            return False
        if isinstance(step, ActionStep) and step.execution is not None:
            return True
    return False


def _same_as_last(memory: list[Step], code: str) -> bool:
    """Whether `code` is what the run's last action step ran, without an error."""
    for step in reversed(memory):
        if isinstance(step, TaskStep):
            return False
        if isinstance(step, ActionStep):
            return step.execution is not None and step.error is None and step.code is not None \
                and step.code.strip() == code.strip()
    return False


def _is_code(text: str) -> bool:
    """Python that does something: prose like "Done.", "It is 42." or "Yes or no" parses (names and
    constants, compared or joined), but is not an action."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(node, ast.Expr) and _inert(node.value)) for node in tree.body)


def _inert(node: ast.expr) -> bool:
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Compare):
        return _inert(node.left) and all(_inert(part) for part in node.comparators)
    return isinstance(node, ast.BoolOp) and all(_inert(part) for part in node.values)


class CodeAgent(MultiStepAgent):
    """Solves a task by writing Python actions that run in a restricted sandbox kernel.

    Tools are called from sandbox code but run in this process: their state (clients, API keys)
    never enters the sandbox. `variables` are copied into the sandbox by the codec.
    """

    kind = "code"
    default_description = ("A Python agent with its own kernel: give it a task in plain language "
                           "(data analysis, computation); it returns the result.")
    _max_steps_prompt: ClassVar[str] = _prompts.MAX_STEPS_CODE
    _send_back: ClassVar[_prompts.SendBack | None] = _prompts.CODE_SEND_BACK

    def __init__(
        self,
        model: Any,
        tools: Iterable[Any] = (),
        *,
        imports: Iterable[str] = (),
        additional_authorized_imports: Iterable[str] | None = None,
        executor_type: str = "local",
        sandbox: SandboxLike | Sandbox | None = None,
        vision: bool | None = None,
        **options: Any,
    ) -> None:
        """Args:
            model: a model name (litellm's) or a Model.
            tools: Tools, @tool functions, typed callables or agents; sandbox code calls them as functions.
            imports: modules the sandbox may import beyond its defaults ("*": any installed one).
            additional_authorized_imports: `imports` as other agent libraries name it.
            executor_type: "local" (this machine's sandbox kernel) or "gateway" (a Jupyter gateway's).
            sandbox: a sandbox to run in (a SandboxLike such as AsyncSandbox, or a Sandbox; its owner closes
                it); None: the agent starts its own.
            vision: send figures to the model as images; None: ask the model (`supports_vision`).
            **options: AgentOptions' fields (max_steps, review, max_cost, ...), then sandbox options
                (timeout, memory, network, gateway, ...; see AsyncSandbox).
        """
        agent_options, sandbox_options = AgentOptions.split(options)
        _check_executor(executor_type, sandbox_options)
        if additional_authorized_imports is not None:  # the name other agent libraries use
            if imports:
                raise TypeError("pass imports=[...] or its alias additional_authorized_imports=[...], not both")
            imports = additional_authorized_imports
        super().__init__(model, tools, **agent_options)
        from ..sandbox import AsyncSandbox, Sandbox

        unknown = set(sandbox_options) - set(inspect.signature(AsyncSandbox).parameters)
        if unknown:
            raise TypeError(f"unknown CodeAgent option(s) {sorted(unknown)}; sandbox options are "
                            f"{sorted(set(inspect.signature(AsyncSandbox).parameters) - {'imports'})}")
        if sandbox is not None and sandbox_options:
            raise TypeError(f"pass sandbox options {sorted(sandbox_options)} to the sandbox you give, not to the agent")
        self.imports = tuple(imports)
        self._sandbox_options = sandbox_options
        self._sandbox: SandboxLike | None = sandbox.as_async() if isinstance(sandbox, Sandbox) else sandbox
        self._owns_sandbox = sandbox is None
        self._registered: set[str] = set()
        self._calls: list[ToolCall] = []  # where tool calls from the running action are recorded
        self._vision = vision  # None: ask litellm whether the model takes images

    @property
    def vision(self) -> bool:
        """Whether figures are sent to the model as images (else as text notes)."""
        if self._vision is None:  # the model says (agent_kernel Model: litellm's table)
            self._vision = bool(getattr(self.model, "supports_vision", False))
        return self._vision

    @property
    def sandbox(self) -> SandboxLike | None:
        """The sandbox the actions run in (an AsyncSandbox unless one was given; None before the first run)."""
        return self._sandbox

    def system_prompt(self) -> str:
        from ..sandbox import DEFAULT_IMPORTS

        if "*" in self.imports:
            imports = "any installed module"
        else:
            imports = ", ".join(sorted(DEFAULT_IMPORTS | set(self.imports)))
        stubs = [_prompts.FINAL_ANSWER_SIGNATURE, *(t.python_signature() for t in self.tools.values())]
        signatures = "\n\n".join(stubs)
        network = "" if self._sandbox_options.get("network") else _prompts.NO_NETWORK
        vision = "; you also see the last figures of a step as images" if self.vision else "; you cannot see the pixels"
        return _prompts.CODE_SYSTEM.format(imports=imports, network=network, signatures=signatures, vision=vision)

    async def _prepare(self, variables: dict[str, Any], reset: bool) -> dict[str, str]:
        if reset and self._owns_sandbox and self._sandbox is not None:
            old, self._sandbox = self._sandbox, None
            self._registered.clear()
            await old.aclose()
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

    async def _request(self, messages: list[Message], on_delta: Callable[[str], None] | None, final: bool,
                       sampling: dict[str, float]) -> Any:
        # The model sends `stop` only where the provider takes it, and cuts the text itself otherwise.
        held = {"grammar": STEP_GRAMMAR} if getattr(self.model, "supports_grammar", False) else {}
        return await self.model.agenerate(messages, stop=_STOP, on_delta=on_delta, **held, **sampling)

    async def _act(self, step: ActionStep, reply: Any, final: bool) -> Any:
        step.code, step.thought = extract_code(step.model_output)
        if step.code is None:
            if _observed(self.memory) and (answer := prose_answer(step.model_output)):
                return answer  # the model saw its results and said the answer in words
            step.error = "no code in the reply"
            step.observation = _prompts.CODE_FORMAT_REMINDER
            return NO_ANSWER
        if not await self._review(step):
            return NO_ANSWER
        shadowed = shadowed_tools(step.code, self.tools)
        if shadowed:  # refused before it runs: the real tools stay, and the model is told plainly
            step.error = "refused: the code redefines " + ", ".join(shadowed)
            step.observation = "\n".join([*(_prompts.TOOL_REDEFINED.format(name=n) for n in shadowed),
                                          _prompts.TOOL_REDEFINED_END])
            return NO_ANSWER
        if _same_as_last(self.memory, step.code):  # small models copy their last reply: running it shows nothing new
            step.observation = _prompts.SAME_CODE_AGAIN
            return NO_ANSWER
        self._calls = step.tool_calls
        assert self._sandbox is not None  # _prepare started it
        execution = await self._sandbox.execute(step.code)
        step.execution = execution
        if execution.error is not None:
            step.error = f"{execution.error.name}: {execution.error.value}"
        observation = render_observation(execution, self._frames)
        if step.review is not None and step.review.decision == "edit":
            observation = _prompts.REVIEW_EDITED_CODE.format(code=step.code) + "\n" + observation
        step.observation = truncate(observation, self.options.max_observation_chars)
        if self.vision:
            step.images = figures_for_model(execution)
        return execution.final_answer if execution.has_final_answer else NO_ANSWER

    def _apply_edit(self, step: ActionStep, text: str) -> None:
        step.code = text

    def _decline(self, step: ActionStep, reason: str) -> None:
        step.observation = _prompts.REVIEW_DECLINED.format(reason=reason or _prompts.NO_REASON)

    def _recorded(self, t: Tool) -> Callable[..., Awaitable[Any]]:
        """The host side of a tool called from sandbox code: its arguments bound and validated
        (`Tool.bind`), then the call. Each call is noted in the running step, so the run shows it and
        an exported notebook can replay its result without the tool."""

        async def call(*args: Any, **kwargs: Any) -> Any:
            record = ToolCall(t.name, {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs})
            self._calls.append(record)
            try:
                record.arguments = t.bind(args, kwargs)  # the schema holds here as for JSON tool calls
                record.result = await t.acall(**record.arguments)
            except Exception as exc:  # the sandbox code sees it as HostFunctionError (ToolArgumentError's text)
                record.error = f"{type(exc).__name__}: {exc}"
                raise
            return record.result

        return call

    def step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        if step.code is None:
            said = step.model_output
        else:  # the stop sequence may have eaten the closing fence; show the format we ask for
            proposed = step.review.original if step.review is not None and step.review.original is not None else step.code
            said = f"```python\n{proposed}\n```"
            if step.thought:
                said = f"Thought: {step.thought}\n{said}"
        return [{"role": "assistant", "content": said or "(empty reply)"},
                {"role": "user", "content": observation_text(step.observation)}]

    def variables_place(self) -> str:
        return "the kernel"

    def answer_typed_in(self, step: ActionStep) -> str | None:
        return typed_answer(step.code) if step.code is not None else None

    def table_named(self, run: Run, group: str) -> str | None:
        ran = [s.code for s in run.action_steps if s.code is not None and s.execution is not None and s.error is None]
        return grouped_by(ran, group)

    def step_summary(self, step: ActionStep) -> str:
        if step.code is None:
            return f"- step {step.index}: no code"
        code = "; ".join(line.strip() for line in step.code.splitlines() if line.strip())
        code = code if len(code) <= 160 else code[:157] + "..."
        outcome = f"error {step.error}" if step.error else "ok"
        return f"- step {step.index}: `{code}` -> {outcome[:160]}"

    # -- lifecycle -------------------------------------------------------------------------------

    def new_run(self, sandbox: SandboxLike | None = None) -> CodeAgent:
        """As for any agent, and the actions run in `sandbox` (the batch's to close, not the copy's)."""
        twin = super().new_run()
        assert isinstance(twin, CodeAgent)
        if sandbox is not None:
            twin._sandbox, twin._owns_sandbox = sandbox, False
            twin._registered = set()
            twin._calls = []
        return twin

    def sandbox_options(self) -> dict[str, Any]:
        """Options for more sandboxes like this agent's: a given sandbox's own, else the agent's."""
        given = self._sandbox
        if given is not None and not self._owns_sandbox:
            return {f.name: getattr(given.options, f.name) for f in dataclasses.fields(given.options)
                    if f.name != "startup_timeout"}
        return {"imports": self.imports, **self._sandbox_options}

    def sandbox_pool(self, size: int, total: int) -> SandboxPool:
        """A pool of sandboxes like this agent's (`sandbox_options()`)."""
        from ..sandbox import SandboxPool

        return SandboxPool(size, total=total, **self.sandbox_options())

    async def aclose(self) -> None:
        """Stop the sandbox kernel this agent started (one passed in is left to its owner)."""
        await super().aclose()
        if self._owns_sandbox and self._sandbox is not None:
            old, self._sandbox = self._sandbox, None
            self._registered.clear()
            await old.aclose()


_EXECUTORS = {
    "local": "the restricted sandbox kernel on this machine (OS isolation layers)",
    "gateway": "the same kernel started by a Jupyter Kernel/Enterprise Gateway (containers, Kubernetes)",
}


def _check_executor(name: str, sandbox_options: dict[str, Any]) -> None:
    """`executor_type=` as other agent libraries spell it; ours are the local sandbox and the gateway."""
    if name == "local":
        if sandbox_options.get("gateway"):
            raise ValueError("gateway=... runs the sandbox on a gateway: drop executor_type='local' or use 'gateway'")
        return
    if name == "gateway":
        if not gateway_url(sandbox_options.get("gateway")):
            raise ValueError("executor_type='gateway' needs the gateway's URL: pass gateway='http://host:8888' "
                             "(and token=...) or set JUPYTER_GATEWAY_URL (and JUPYTER_GATEWAY_AUTH_TOKEN)")
        return
    listed = "; ".join(f"{k!r}: {v}" for k, v in _EXECUTORS.items())
    raise ValueError(f"unknown executor_type {name!r}. The executors are {listed}. To run the sandbox on a "
                     "container platform (Docker, Kubernetes, a cloud sandbox service), run a Jupyter gateway "
                     "there with the `agent-sandbox` kernelspec (`python -m agent_kernel install-kernelspec`) "
                     "and use executor_type='gateway'.")


def figures_for_model(execution: Execution) -> list[str]:
    """The execution's last few PNGs, checked and scaled down to IMAGE_MAX_SIDE, as base64."""
    pngs = [o["data"]["image/png"] for o in execution.outputs
            if o["output_type"] in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
    scaled = (_scaled_png(png) for png in pngs[-MAX_IMAGES:])
    return [png for png in scaled if png is not None]


def _scaled_png(encoded: Any) -> str | None:
    """A sandbox PNG made safe and small: it must really be a PNG of sane size; big ones shrink."""
    valid = image_base64("image/png", encoded)
    size = png_size(valid) if valid else None
    if valid is None or size is None or size[0] * size[1] > _MAX_DECODE_PIXELS:
        return None
    if max(size) <= IMAGE_MAX_SIDE:
        return valid
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(valid))) as image:
            image.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))
            out = io.BytesIO()
            image.save(out, format="PNG")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return base64.b64encode(out.getvalue()).decode("ascii")
