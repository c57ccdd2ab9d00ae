"""Tools an agent can call: name, description and a JSON schema, built from type hints + docstring.

One `Tool` serves both agents: a ToolCallingAgent sends `openai_schema()` to the model and checks
the model's arguments with `validate`; a CodeAgent shows `python_signature()` in its prompt and the
sandbox calls the tool in the host, so whatever the tool holds (API keys) stays out of the sandbox.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import AgentKernelError

__all__ = ["Tool", "ToolArgumentError", "ToolError", "VariableHolder", "as_tool", "tool"]
Schema = dict[str, Any]
_RESERVED_NAMES = frozenset({"final_answer"})


class ToolArgumentError(AgentKernelError, ValueError):
    """The model's arguments do not fit the tool's schema; the message is written for the model."""


class ToolError(AgentKernelError, RuntimeError):
    """A tool ran and failed; the message is written for the model, which sees it as the call's error
    (a tool's other exceptions reach it as "TypeName: message")."""


class Tool:
    """A callable the agent may use. Subclass it for tools that hold state (clients, keys, caches).

    Set `name`, `description` and implement `forward`; `parameters` (a JSON schema object) and
    `output_type` are derived from `forward`'s type hints and docstring when not set.
    """

    name: str = ""
    description: str = ""
    parameters: Schema | None = None
    output_type: str = ""
    _signature_types: dict[str, str]  # parameter -> Python type text for `python_signature`
    # A function's *args (an array property) and **kwargs (the schema's additionalProperties), by name.
    _var_positional: str | None = None
    _var_keyword: str | None = None
    # Set on subclasses that fill name/parameters per instance (in __init__), not per class.
    _abstract: bool = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(...)")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.forward is Tool.forward or cls.__dict__.get("_abstract", False):
            return
        spec = _describe_callable(cls.forward, skip_first=True, strict=False)
        cls.name = cls.__dict__.get("name") or cls.name or _snake_case(cls.__name__)
        cls.description = cls.__dict__.get("description") or cls.description or spec.description
        if cls.parameters is None:
            cls.parameters = spec.parameters
        cls.output_type = cls.output_type or spec.output_type
        cls._signature_types = {**schema_types(cls.parameters), **spec.signature_types}
        check_definition(cls.name, cls.description, cls.parameters, where=cls.__qualname__)

    # -- calling ---------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call from sync code; an async tool runs on agent_kernel's background loop."""
        result = self.forward(*args, **kwargs)
        if inspect.isawaitable(result):
            from . import _aio

            return _aio.run_sync(_awaited(result))
        return result

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Call from async code; a sync tool runs in a worker thread so it cannot block the loop."""
        if _is_async(self.forward):
            return await self.forward(*args, **kwargs)
        result = await asyncio.to_thread(self.forward, *args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    # -- describing ------------------------------------------------------------------------------

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Check the model's arguments; raise ToolArgumentError saying what is wrong and what fits."""
        import jsonschema

        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolArgumentError(self._argument_message([f"arguments are not valid JSON ({e})"])) from None
        if not isinstance(arguments, dict):
            problem = f"arguments must be a JSON object, got {type(arguments).__name__}"
            raise ToolArgumentError(self._argument_message([problem]))
        validator = _validator_class()(self.parameters or _EMPTY_OBJECT)
        problems = [_describe_violation(e) for e in sorted(validator.iter_errors(arguments), key=str)]
        if problems:
            raise ToolArgumentError(self._argument_message(problems))
        return arguments

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A Python call's arguments (sandbox code calling the tool) as the schema's object, validated.

        Positional arguments take the order `python_signature` shows the model; then `validate`
        holds a CodeAgent's calls to the same schema (types, Literal values, required, no extras)
        as a ToolCallingAgent's JSON ones.
        """
        names = self._parameter_names()
        if self._var_positional is not None:  # the parameters before *args, in order; the rest are *args
            listed = list((self.parameters or _EMPTY_OBJECT)["properties"])
            names = listed[: listed.index(self._var_positional)]
            if len(args) > len(names):
                args, kwargs = args[: len(names)], {**kwargs, self._var_positional: list(args[len(names) :])}
        problems = []
        if len(args) > len(names):
            problems.append(f"takes {len(names)} positional argument(s) ({', '.join(names) or 'none'}), got {len(args)}")
        arguments = dict(zip(names, args))
        problems += [f"got multiple values for argument {k!r}" for k in kwargs if k in arguments]
        if problems:
            raise ToolArgumentError(self._argument_message(problems))
        return self.validate({**arguments, **kwargs})

    def _parameter_names(self) -> list[str]:
        """The parameters in the order `python_signature` lists them: required first, else the schema's order."""
        schema = self.parameters or _EMPTY_OBJECT
        required = set(schema.get("required", ()))
        return sorted(schema.get("properties", {}), key=lambda name: name not in required)

    def _argument_message(self, problems: list[str]) -> str:
        schema = json.dumps(self.parameters or _EMPTY_OBJECT, separators=(",", ":"))
        listed = "\n".join(f"- {p}" for p in problems)
        return f"Invalid arguments for tool {self.name!r}:\n{listed}\nCall it again with arguments matching: {schema}"

    def openai_schema(self) -> dict[str, Any]:
        """The tool as litellm/OpenAI `tools=` expects it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description,
                         "parameters": self.parameters or _EMPTY_OBJECT},
        }

    def python_signature(self) -> str:
        """A stub the CodeAgent prompt shows: the def line with types, the docstring, body `...`."""
        schema = self.parameters or _EMPTY_OBJECT
        required = set(schema.get("required", ()))
        properties: dict[str, Schema] = schema.get("properties", {})
        params: list[str] = []
        arg_docs = []
        for pname in self._parameter_names():  # required first, as Python demands
            pschema = properties[pname]
            text = f"{pname}: {self._signature_types.get(pname, 'Any')}"
            if pname == self._var_positional:
                text = f"*{text}"
            elif pname not in required:
                text += f" = {pschema['default']!r}" if "default" in pschema else " = None"
            params.append(text)
            if pschema.get("description"):
                arg_docs.append(f"{pname}: {pschema['description']}")
        if self._var_keyword is not None:
            params.append(f"**{self._var_keyword}: {self._signature_types.get(self._var_keyword, 'Any')}")
        doc = self.description.strip() or self.name
        if arg_docs:
            doc += "\n\nArgs:\n" + "\n".join(textwrap.indent(a, "    ") for a in arg_docs)
        doc = textwrap.indent(doc.replace('"""', '\\"\\"\\"'), "    ")
        returns = f" -> {self.output_type}" if self.output_type else ""
        return f'def {self.name}({", ".join(params)}){returns}:\n    """{doc.lstrip()}\n    """\n    ...'

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_EMPTY_OBJECT: Schema = {"type": "object", "properties": {}}


class FunctionTool(Tool):
    """A tool made from a function by `@tool` or `as_tool`; it stays callable like the function."""

    _abstract = True

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, strict: bool = True) -> None:
        spec = _describe_callable(fn, skip_first=False, strict=strict, variadic=True)
        self.fn = fn
        self._var_positional, self._var_keyword = spec.var_positional, spec.var_keyword
        self.name = name or getattr(fn, "__name__", "") or _snake_case(type(fn).__name__)
        self.description = spec.description
        self.parameters = spec.parameters
        self.output_type = spec.output_type
        self._signature_types = spec.signature_types
        self._enums = spec.enums
        check_definition(self.name, self.description, self.parameters, where=getattr(fn, "__qualname__", self.name))
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._spread(args, self._enum_members(kwargs))
        return self.fn(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        if _is_async(self.fn):
            args, kwargs = self._spread(args, self._enum_members(kwargs))
            return await self.fn(*args, **kwargs)
        return await super().acall(*args, **kwargs)

    def _spread(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The schema's object as the function's call: *args' array after the positional parameters."""
        if self._var_positional is None or self._var_positional not in kwargs:
            return args, kwargs
        kwargs = dict(kwargs)
        rest = list(kwargs.pop(self._var_positional))
        positional = []
        for p in inspect.signature(self.fn).parameters.values():
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name not in kwargs:
                break
            positional.append(kwargs.pop(p.name))
        return (*args, *positional, *rest), kwargs

    def _enum_members(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """JSON carries an enum's value; the function was written for the Enum member."""
        if not self._enums:
            return kwargs
        return {k: self._enums[k](v) if k in self._enums and not isinstance(v, enum.Enum) else v
                for k, v in kwargs.items()}


@runtime_checkable
class VariableHolder(Protocol):
    """A tool whose code can use a task's variables (the python tool): a ToolCallingAgent copies the
    variables into it before the run and tells the model they are there."""

    name: str

    async def apush(self, **values: Any) -> None: ...


@runtime_checkable
class Delegate(Protocol):
    """An agent another agent can call as a tool (every MultiStepAgent is one): it has a name and
    a description for the caller's model, and runs a task in words to a Run."""

    name: str
    description: str

    async def arun(self, task: str) -> Any: ...


class AgentTool(Tool):
    """Another agent behind a tool: the caller hands it a task in words and gets its run's output."""

    _abstract = True

    def __init__(self, agent: Delegate) -> None:
        self.agent = agent
        self.name = agent.name
        self.description = agent.description
        self.parameters = {
            "type": "object",
            "properties": {"task": {"type": "string",
                                    "description": "the task, fully stated: this agent sees nothing else"}},
            "required": ["task"],
            "additionalProperties": False,
        }
        self.output_type = "Any"
        self._signature_types = {"task": "str"}
        check_definition(self.name, self.description, self.parameters, where=repr(agent))

    async def forward(self, task: str) -> Any:
        run = await self.agent.arun(task)
        if run.state not in ("success", "max_steps"):
            raise RuntimeError(f"agent {self.name!r} ended in state {run.state!r}: {run.error or 'no answer'}")
        return run.output


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Make a typed, documented function (sync or async) into a Tool: `@tool` or `@tool(name=...)`."""
    if fn is None:
        return lambda f: FunctionTool(f, name=name)
    return FunctionTool(fn, name=name)


def as_tool(obj: Any) -> Tool:
    """Accept what users naturally pass in `tools=[...]`: a Tool, a @tool function, a typed callable, an agent."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, type) and issubclass(obj, Tool):
        raise TypeError(f"{obj.__name__} is a Tool class; pass an instance: {obj.__name__}()")
    if isinstance(obj, Delegate):
        return AgentTool(obj)
    if callable(obj):
        return FunctionTool(obj, strict=False)
    raise TypeError(f"cannot use {obj!r} as a tool; pass a Tool, a function decorated with @tool, "
                    "a typed function or an agent")


def check_definition(name: str, description: str, parameters: Any, *, where: str) -> None:
    """Refuse a tool a model could not call: a bad name, no description, or an invalid schema.

    Shared by every way a tool is made here (@tool, Tool subclasses, agents, MCP tools).
    """
    import jsonschema

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name or ""):
        raise ValueError(f"tool name {name!r} ({where}) must be a Python identifier of at most 64 characters")
    if name in _RESERVED_NAMES:
        raise ValueError(f"tool name {name!r} ({where}) is reserved by the agent; rename the tool")
    if not isinstance(description, str):
        raise TypeError(f"tool {name!r} ({where}): description must be a string")
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(f"tool {name!r} ({where}): parameters must be a JSON schema object "
                         '({"type": "object", "properties": ...})')
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as e:
        raise ValueError(f"tool {name!r} ({where}): parameters is not a valid JSON schema: {e.message}") from None


@functools.cache
def _validator_class() -> Any:
    """JSON Schema 2020-12, where a Python call's values count as their JSON kinds too: a tuple is an
    array, a numpy integer an integer (sandbox code passes Python objects, not parsed JSON)."""
    import numbers

    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({
        "array": lambda checker, value: isinstance(value, (list, tuple)),
        "integer": lambda checker, value: (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                                           or isinstance(value, float) and value.is_integer()),
    })
    return jsonschema.validators.extend(base, type_checker=checker)


def _describe_violation(error: Any) -> str:
    """One problem, in a line of readable length (sandbox code can pass a huge value, which the message quotes)."""
    where = "/".join(str(p) for p in error.absolute_path)
    text = f"{where}: {error.message}" if where else error.message
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 1] + "…"


_MAX_PROBLEM_CHARS = 500


def _is_async(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions and for objects whose `__call__` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- from a Python signature to a JSON schema ---------------------------------------------------


class _Spec(typing.NamedTuple):
    description: str
    parameters: Schema
    output_type: str
    signature_types: dict[str, str]
    enums: dict[str, type[enum.Enum]]
    var_positional: str | None = None
    var_keyword: str | None = None


def _describe_callable(fn: Callable[..., Any], *, skip_first: bool, strict: bool, variadic: bool = False) -> _Spec:
    """Schema and docs of `fn`. `strict` (the @tool decorator) demands a docstring and full type hints.

    `variadic` (a function's tool, which spreads the call back): *args becomes an optional array
    property of that name, whose items are its hint; **kwargs lets other keys in (additionalProperties:
    its hint's schema), so a model passes them as any other argument. A Tool's forward ignores them."""
    label = getattr(fn, "__qualname__", repr(fn))
    annotated = fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn).__call__  # a callable object
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot read the signature of {label}: {e}") from None
    try:
        hints = typing.get_type_hints(annotated)
    except NameError:  # a string annotation naming a class local to a function: keep its text
        hints = {k: _resolve_annotation(v, getattr(annotated, "__globals__", {}))
                 for k, v in getattr(annotated, "__annotations__", {}).items()}
    doc = _parse_docstring(inspect.getdoc(fn) or "")
    if strict and not doc.summary:
        raise TypeError(f"@tool {label} needs a docstring: the model reads it to decide when and how to call the tool")
    properties: dict[str, Schema] = {}
    required: list[str] = []
    signature_types: dict[str, str] = {}
    enums: dict[str, type[enum.Enum]] = {}
    var_positional = var_keyword = None
    extra: Schema | bool = False
    params = list(signature.parameters.values())[1 if skip_first else 0 :]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if strict:
                raise TypeError(f"@tool {label}: *{p.name}/**{p.name} cannot be described to a model; "
                                "list the parameters")
            if not variadic:
                continue
            item = _schema_for(hints.get(p.name, Any), f"{label}({p.name})")
            if p.name in hints:
                signature_types[p.name] = _type_text(hints[p.name])
            if p.kind == p.VAR_KEYWORD:
                var_keyword, extra = p.name, item or True
                continue
            var_positional = p.name
            properties[p.name] = {"type": "array", "items": item,
                                  **({"description": doc.params[p.name]} if p.name in doc.params else {})}
            continue
        if p.name not in hints and strict:
            raise TypeError(f"@tool {label}: parameter {p.name!r} needs a type hint (e.g. `{p.name}: str`)")
        hint = hints.get(p.name, Any)
        schema = _schema_for(hint, f"{label}({p.name})")
        if p.name in doc.params:
            schema["description"] = doc.params[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif _json_value(p.default):
            schema["default"] = p.default.value if isinstance(p.default, enum.Enum) else p.default
        properties[p.name] = schema
        if p.name in hints:
            signature_types[p.name] = _type_text(hint)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            enums[p.name] = hint
    parameters: Schema = {"type": "object", "properties": properties, "required": required,
                          "additionalProperties": extra}
    returns = hints.get("return", signature.return_annotation)
    output_type = "" if returns is inspect.Signature.empty else _type_text(returns)
    return _Spec(doc.summary, parameters, output_type, signature_types, enums, var_positional, var_keyword)


def _resolve_annotation(annotation: Any, namespace: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(namespace), {})  # noqa: S307 - the tool author's own annotation text
    except Exception:
        return annotation


_PRIMITIVES: dict[Any, Schema] = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
                                  bool: {"type": "boolean"}, type(None): {"type": "null"}}


def _schema_for(hint: Any, where: str) -> Schema:
    if hint in _PRIMITIVES:
        return dict(_PRIMITIVES[hint])
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        values = list(args)
        types_ = sorted({_PRIMITIVES[type(v)]["type"] for v in values if type(v) in _PRIMITIVES})
        return {"type": types_[0] if len(types_) == 1 else types_, "enum": values}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _schema_for(typing.Literal[tuple(m.value for m in hint)], where)
    if origin in (typing.Union, types.UnionType):
        options = [_schema_for(a, where) for a in args]
        nullable = {"type": "null"} in options
        rest = [o for o in options if o != {"type": "null"}]
        if nullable and len(rest) == 1 and isinstance(rest[0].get("type"), str) and "enum" not in rest[0]:
            return {**rest[0], "type": [rest[0]["type"], "null"]}
        return {"anyOf": options}
    if hint in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset, Sequence,
                                                            typing.get_origin(typing.Sequence[int])):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [_schema_for(a, where) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema_for(args[0], where)} if args else {"type": "array"}
    if hint is dict or origin in (dict, Mapping, typing.get_origin(typing.Mapping[str, int])):
        if len(args) == 2 and args[0] is not str:
            raise TypeError(f"{where}: JSON object keys are strings; use dict[str, ...] instead of {_type_text(hint)}")
        return {"type": "object", "additionalProperties": _schema_for(args[1], where)} if args else {"type": "object"}
    # Other classes (a DataFrame, a path): no JSON form, so any value passes the schema;
    # a CodeAgent still shows the real type in the signature and passes real objects.
    return {}


def _type_text(hint: Any) -> str:
    """How the hint reads in Python source; an Enum shows as the Literal of its values (what to pass)."""
    if hint is type(None):
        return "None"
    if hint is Any or hint is inspect.Parameter.empty:
        return "Any"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"Literal[{', '.join(repr(m.value) for m in hint)}]"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is Ellipsis else _type_text(a) for a in args)}]" if args else base
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


_SCHEMA_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None",
                 "object": "dict", "array": "list"}


def schema_types(parameters: Schema | None) -> dict[str, str]:
    """Python type text for a hand-written schema (a Tool subclass that sets `parameters` itself)."""
    return {name: schema_type_text(s) for name, s in (parameters or {}).get("properties", {}).items()}


def schema_type_text(schema: Schema) -> str:
    """A JSON schema as Python type text, for the signatures a CodeAgent's prompt shows."""
    if "enum" in schema:
        return f"Literal[{', '.join(repr(v) for v in schema['enum'])}]"
    if "anyOf" in schema:
        return " | ".join(schema_type_text(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(schema_type_text({**schema, "type": k}) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"list[{schema_type_text(schema['items'])}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict[str, {schema_type_text(schema['additionalProperties'])}]"
    return _SCHEMA_TYPES.get(kind, "Any") if isinstance(kind, str) else "Any"


def _json_value(value: Any) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- docstrings: Google (`Args:`), NumPy (`Parameters` + dashes) and reST (`:param x:`) ------------


class _Doc(typing.NamedTuple):
    summary: str
    params: dict[str, str]


_GOOGLE_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns|Return|Yields|Raises|Examples?|Notes?|See Also"
    r"|Attributes)\s*:\s*$"
)
_NUMPY_SECTION = re.compile(r"^-{3,}\s*$")
_GOOGLE_PARAM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_PARAM = re.compile(r"^\*{0,2}(\w+)\s*(?::\s*(.*))?$")
_REST_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> _Doc:
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    in_sections = False  # prose after the first section belongs to no summary
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _GOOGLE_SECTION.match(stripped):
            in_sections = True
            section = stripped.rstrip(":").strip()
            i = _read_section(lines, i + 1, section in ("Args", "Arguments", "Parameters", "Params", "Keyword Args"),
                              params, google=True)
        elif i + 1 < len(lines) and stripped and _NUMPY_SECTION.match(lines[i + 1].strip()):
            in_sections = True
            i = _read_section(lines, i + 2, stripped in ("Parameters", "Other Parameters"), params, google=False)
        elif _REST_PARAM.match(stripped) or stripped.startswith((":return", ":rtype", ":raises", ":type")):
            in_sections = True
            match = _REST_PARAM.match(stripped)
            if match:
                params[match.group(1)] = match.group(2).strip()
            i += 1
        else:
            if not in_sections:
                summary.append(line)
            i += 1
    return _Doc("\n".join(summary).strip(), params)


def _read_section(lines: list[str], i: int, is_params: bool, params: dict[str, str], *, google: bool) -> int:
    """Read one section's body from line i; return the index of the first line after it."""
    entries: list[tuple[str, list[str]]] = []
    base_indent: int | None = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if google and stripped and base_indent is None and _GOOGLE_SECTION.match(stripped):
            break
        if not google and stripped and i + 1 < len(lines) and _NUMPY_SECTION.match(lines[i + 1].strip()):
            break
        indent = len(line) - len(line.lstrip())
        if stripped and google and base_indent is not None and indent < base_indent:
            break
        if not stripped:
            if google and base_indent is None:
                i += 1
                continue
            if entries:
                entries[-1][1].append("")
            i += 1
            continue
        if base_indent is None:
            base_indent = indent
        if indent == base_indent:
            match = (_GOOGLE_PARAM if google else _NUMPY_PARAM).match(stripped)
            if match:
                first = match.group(3) if google else ""
                entries.append((match.group(1), [first] if first else []))
            elif entries:
                entries[-1][1].append(stripped)
        elif entries:
            entries[-1][1].append(stripped)
        i += 1
    if is_params:
        for name, text in entries:
            params[name] = " ".join(t for t in text if t).strip()
    return i
