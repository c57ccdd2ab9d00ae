"""Tools: schemas from hints and docstrings, validation messages, sync/async calls, stubs for the prompt."""

from __future__ import annotations

import ast
import asyncio
import enum
import threading
from typing import Any, Literal, Optional

import jsonschema
import pytest

from agent_kernel.tools import Tool, ToolArgumentError, as_tool, tool


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


@tool
def search(query: str, limit: int = 5, tags: list[str] | None = None, mode: Literal["fast", "deep"] = "fast") -> list[str]:
    """Search the notes.

    Matches are ranked by recency.

    Args:
        query: what to look for.
        limit: how many results to return,
            at most.
        tags (list[str]): only notes with all these tags.
        mode: how hard to look.

    Returns:
        the matching titles.
    """
    return [f"{query}:{mode}:{i}" for i in range(limit)]


@tool
def convert(value: float, unit: Unit = Unit.CELSIUS, scale: Optional[dict[str, float]] = None) -> str:
    """Convert a temperature.

    Parameters
    ----------
    value : float
        the temperature
        in kelvin.
    unit : Unit, optional
        target unit.

    Returns
    -------
    str
    """
    assert isinstance(unit, Unit), "the function receives the Enum member, not its JSON value"
    return f"{value}{unit.value}"


def test_schema_from_google_docstring():
    schema = search.parameters
    assert search.name == "search"
    assert search.description == "Search the notes.\n\nMatches are ranked by recency."
    assert schema["required"] == ["query"]
    props = schema["properties"]
    assert props["query"] == {"type": "string", "description": "what to look for."}
    assert props["limit"] == {"type": "integer", "description": "how many results to return, at most.", "default": 5}
    assert props["tags"]["type"] == ["array", "null"] and props["tags"]["items"] == {"type": "string"}
    assert props["tags"]["description"] == "only notes with all these tags."
    assert props["mode"] == {"type": "string", "enum": ["fast", "deep"], "description": "how hard to look.", "default": "fast"}
    assert search.output_type == "list[str]"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_from_numpy_docstring_with_enum_and_optional_dict():
    props = convert.parameters["properties"]
    assert convert.description == "Convert a temperature."
    assert props["value"] == {"type": "number", "description": "the temperature in kelvin."}
    assert props["unit"] == {"type": "string", "enum": ["c", "f"], "description": "target unit.", "default": "c"}
    assert props["scale"]["type"] == ["object", "null"]
    assert props["scale"]["additionalProperties"] == {"type": "number"}
    assert convert.parameters["required"] == ["value"]


def test_rest_docstring_params():
    @tool
    def area(w: float, h: float) -> float:
        """Area of a rectangle.

        :param w: width in metres.
        :param h: height in metres.
        """
        return w * h

    assert area.description == "Area of a rectangle."
    assert area.parameters["properties"]["h"]["description"] == "height in metres."


def test_enum_arguments_arrive_as_members():
    assert convert(1.0, unit=Unit.FAHRENHEIT) == "1.0f"
    assert asyncio.run(convert.acall(value=2.0, unit="f")) == "2.0f"


def test_validate_reports_every_problem_and_the_schema():
    with pytest.raises(ToolArgumentError) as info:
        search.validate({"limit": "ten", "colour": "red"})
    message = str(info.value)
    assert "'query' is a required property" in message
    assert "limit: 'ten' is not of type 'integer'" in message
    assert "'colour' was unexpected" in message
    assert '"required":["query"]' in message  # the expected schema, so the model can correct itself
    with pytest.raises(ToolArgumentError, match="mode: 'slow' is not one of"):
        search.validate({"query": "x", "mode": "slow"})
    with pytest.raises(ToolArgumentError, match="not valid JSON"):
        search.validate('{"query": ')
    with pytest.raises(ToolArgumentError, match="must be a JSON object"):
        search.validate(["x"])
    assert search.validate({"query": "x", "tags": None}) == {"query": "x", "tags": None}
    assert search.validate('{"query": "y"}') == {"query": "y"}


def test_openai_schema_shape():
    schema = search.openai_schema()
    assert schema["type"] == "function"
    assert schema["function"]["name"] == "search"
    assert schema["function"]["parameters"] is search.parameters


def test_python_signature_is_valid_python_with_types_defaults_and_docs():
    stub = search.python_signature()
    assert stub.startswith(
        "def search(query: str, limit: int = 5, tags: list[str] | None = None, "
        "mode: Literal['fast', 'deep'] = 'fast') -> list[str]:\n"
    )
    assert "        limit: how many results to return, at most." in stub
    assert stub.rstrip().endswith("...")
    tree = ast.parse(stub)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn).startswith("Search the notes.")
    # an Enum shows as the values the model should pass
    assert "unit: Literal['c', 'f'] = 'c'" in convert.python_signature()


def test_sync_and_async_functions_both_work_from_sync_and_async_code():
    @tool
    async def fetch(key: str) -> str:
        """Fetch a value.

        Args:
            key: which value.
        """
        await asyncio.sleep(0)
        return key.upper()

    threads: list[str] = []

    @tool
    def blocking(key: str) -> str:
        """A blocking lookup.

        Args:
            key: which value.
        """
        threads.append(threading.current_thread().name)
        return key * 2

    assert fetch("a") == "A"  # sync call of an async tool runs on the background loop
    assert blocking("b") == "bb"

    async def main() -> tuple[Any, Any]:
        return await fetch.acall(key="c"), await blocking.acall(key="d")

    assert asyncio.run(main()) == ("C", "dd")
    assert threads[-1] != threading.main_thread().name  # acall ran the sync tool in a worker thread


def test_stateful_tool_subclass_derives_schema_from_forward():
    class Weather(Tool):
        description = "Current weather for a city."

        def __init__(self, api_key: str) -> None:
            self.api_key = api_key

        def forward(self, city: str, days: int = 1) -> str:
            """Weather.

            Args:
                city: the city name.
                days: how many days ahead.
            """
            return f"{city}:{days}:{self.api_key[:2]}"

    weather = Weather("sk-123")
    assert weather.name == "weather"
    assert weather.description == "Current weather for a city."
    assert weather.parameters["required"] == ["city"]
    assert weather.parameters["properties"]["days"]["description"] == "how many days ahead."
    assert weather(city="Oslo") == "Oslo:1:sk"
    assert asyncio.run(weather.acall(city="Rome", days=2)) == "Rome:2:sk"
    assert weather.python_signature().startswith("def weather(city: str, days: int = 1) -> str:")


def test_subclass_with_handwritten_schema():
    class Lookup(Tool):
        name = "lookup"
        description = "Look up codes."
        parameters = {"type": "object", "properties": {"codes": {"type": "array", "items": {"type": "integer"}},
                                                        "exact": {"type": "boolean", "default": True}},
                      "required": ["codes"]}

        def forward(self, codes, exact=True):
            return [c * 2 for c in codes]

    lookup = Lookup()
    assert lookup.python_signature().startswith("def lookup(codes: list[int], exact: bool = True):")
    with pytest.raises(ToolArgumentError, match="codes/1: 'x' is not of type 'integer'"):
        lookup.validate({"codes": [1, "x"]})


def test_decorator_errors_say_what_to_do():
    with pytest.raises(TypeError, match="needs a docstring"):
        @tool
        def no_doc(x: int) -> int:
            return x

    with pytest.raises(TypeError, match=r"parameter 'x' needs a type hint \(e.g. `x: str`\)"):
        @tool
        def untyped(x) -> int:
            """Doc."""
            return x

    with pytest.raises(ValueError, match="reserved"):
        @tool
        def final_answer(x: int) -> int:
            """Doc."""
            return x

    with pytest.raises(TypeError, match="use dict\\[str, ...\\]"):
        @tool
        def bad_keys(x: dict[int, str]) -> int:
            """Doc."""
            return 0

    with pytest.raises(ValueError, match="not a valid JSON schema"):
        class Broken(Tool):
            name = "broken"
            description = "x"
            parameters = {"type": "object", "properties": {"a": {"type": "nonsense"}}}

            def forward(self, a):
                return a


def test_as_tool_accepts_plain_callables_and_rejects_others():
    def scale(values: list[float], factor=2.0):
        return [v * factor for v in values]

    t = as_tool(scale)
    assert t.name == "scale" and t.description == ""
    assert t.parameters["required"] == ["values"]
    assert t.parameters["properties"]["factor"] == {"default": 2.0}
    assert t([1.0]) == [2.0]
    assert as_tool(search) is search
    assert tool(name="find")(search.fn).name == "find"

    class Counter:
        """Count calls."""

        def __call__(self, step: int = 1) -> int:
            return step

    assert as_tool(Counter()).parameters["properties"]["step"]["type"] == "integer"
    with pytest.raises(TypeError, match="pass an instance"):
        as_tool(Tool)
    with pytest.raises(TypeError, match="cannot use 42 as a tool"):
        as_tool(42)


def test_unknown_classes_pass_through_for_code_agents():
    class Frame:
        pass

    def summarise(df: Frame, columns: tuple[str, ...] = ()) -> str:
        """Summarise a frame."""
        return "ok"

    t = as_tool(summarise)
    assert t.parameters["properties"]["df"] == {}
    assert t.python_signature().startswith("def summarise(df: Frame, columns: tuple[str, ...] = ()) -> str:")


def test_as_tool_takes_star_args_as_an_array_and_star_kwargs_as_extra_arguments():
    def join(first: int, *rest: int, sep: str = ",", **labels: str) -> str:
        """Join numbers."""
        return sep.join(map(str, (first, *rest))) + "".join(f" {k}={v}" for k, v in sorted(labels.items()))

    t = as_tool(join)
    assert t.parameters["properties"]["rest"] == {"type": "array", "items": {"type": "integer"}}
    assert t.parameters["additionalProperties"] == {"type": "string"} and t.parameters["required"] == ["first"]
    assert t(**t.bind((1, 2, 3), {"sep": "-", "unit": "kg"})) == "1-2-3 unit=kg"  # a Python call from sandbox code
    assert t(**t.validate({"first": 1, "rest": [5], "unit": "g"})) == "1,5 unit=g"  # a JSON call
    assert t(**t.bind((7,), {})) == "7"
    with pytest.raises(ToolArgumentError, match="is not of type 'string'"):
        t.validate({"first": 1, "unit": 3})
    with pytest.raises(ToolArgumentError, match="is not of type 'integer'"):
        t.bind((1, "x"), {})
    assert t.python_signature().startswith("def join(first: int, *rest: int, sep: str = ',', **labels: str) -> str:")
    compile(t.python_signature(), "<stub>", "exec")


def test_as_tool_is_public():
    import agent_kernel

    assert agent_kernel.as_tool is as_tool and "as_tool" in agent_kernel.__all__
