"""The agent loop end to end: litellm's real HTTP client against the scripted server, real sandbox kernels."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.formatters import DisplayFormatter
from nbclient import NotebookClient
from sample_tools import add
from scripted_server import Reply, text, tool_calls

from agent_kernel.agents import CodeAgent, ToolCallingAgent
from agent_kernel.agents._code import extract_code, shadowed_tools
from agent_kernel.agents._context import truncate
from agent_kernel.agents._tool_calling import parse_json_calls
from agent_kernel.memory import (
    ActionStep,
    FinalAnswerStep,
    PlanningStep,
    RunCompleted,
    StepCompleted,
    StepStarted,
    TaskStep,
    TextDelta,
    Usage,
)
from agent_kernel.observation import render_observation
from agent_kernel.sandbox._records import Execution, ExecutionError
from agent_kernel.tools import Tool, tool


def _requests_for(server: Any, key: str) -> list[dict[str, Any]]:
    return [r for r in server.requests if key in json.dumps(r["messages"][:2])]


def _last_content(request: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in request["messages"][-2:])


# -- parsing and rendering, no model needed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("Thought: add.\n```python\nx = 1\nprint(x)\n```\nthen more prose", "x = 1\nprint(x)"),
        ("```py\ny = 2\n```", "y = 2"),
        ("Thought: done.\n```python\nfinal_answer(m)```\n", "final_answer(m)"),  # closed on its last line
        ("Here:\n```\nz = 3\n```", "z = 3"),
        ("Thought: cut by the stop sequence\n```python\nw = 4\nprint(w)", "w = 4\nprint(w)"),
        ("```json\n{\"a\": 1}\n```\n```python\nv = 5\n```", "v = 5"),
        ("I will run <code>print('tag')</code>", "print('tag')"),
        ("result = sum(range(10))\nprint(result)", "result = sum(range(10))\nprint(result)"),
        ("Done.", None),
        ("It is 42.", None),  # parses as a comparison, does nothing
        ("Yes or no", None),
        ("sales.shape", "sales.shape"),  # shows a value: an action
        ("The answer is probably 42, as computed above.", None),
    ],
)
def test_extract_code(reply: str, code: str | None):
    assert extract_code(reply)[0] == code


def test_extract_code_keeps_the_thought():
    assert extract_code("Thought: load it first.\n```python\nx = 1\n```")[1] == "load it first."


def test_truncate_keeps_head_and_tail_and_says_so():
    text_ = "".join(f"line {i}\n" for i in range(1000))
    cut = truncate(text_, 300)
    assert cut.startswith("line 0\n") and cut.endswith("line 999\n")
    assert "characters cut" in cut and len(cut) < 400
    assert truncate("short", 300) == "short"


def test_render_observation_orders_outputs_and_notes_images():
    png_1x2 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAACCAYAAACZgbYnAAAAE0lEQVR4nGNgYGD4z8DAwMDAAAAMBAEAbmVxIAAAAABJRU5ErkJggg=="
    execution = Execution(
        code="...",
        outputs=[
            {"output_type": "stream", "name": "stdout", "text": "hello\n"},
            {"output_type": "display_data", "data": {"image/png": png_1x2, "text/plain": "<Figure>"}, "metadata": {}},
            {"output_type": "execute_result", "data": {"text/plain": "   a\n0  1"}, "metadata": {}, "execution_count": 1},
        ],
        error=ExecutionError("ZeroDivisionError", "division by zero",
                             "\n".join(f"frame {i}" for i in range(50)) + "\nZeroDivisionError: division by zero"),
    )
    observation = render_observation(execution)
    assert observation.index("hello") < observation.index("[displayed image/png 1x2]") < observation.index("Out:    a")
    assert "traceback lines cut" in observation and "frame 2\n" not in observation
    assert observation.endswith("ZeroDivisionError: division by zero")


def test_parse_json_calls():
    calls, problem = parse_json_calls('I will call it: {"name": "add", "arguments": {"a": 1, "b": 2}} now')
    assert problem is None and [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    calls, _ = parse_json_calls('[{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}, {"name": "final_answer", "arguments": {"answer": 3}}]')
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2}), ("final_answer", {"answer": 3})]
    assert parse_json_calls("no json here") == ([], None)
    assert "no tool call" in parse_json_calls('{"answer": 3}')[1]


def test_code_system_prompt_is_concise():
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    # the tokenizer files litellm ships: no download
    os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers")
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base")
    agent = CodeAgent("openai/unused")
    tokens = len(encoding.encode(agent.system_prompt()))
    assert 150 < tokens <= 1000, tokens
    with_tools = CodeAgent("openai/unused", tools=[add])
    prompt = with_tools.system_prompt()
    assert add.python_signature() in prompt and "final_answer(answer: Any)" in prompt
    assert "sqlite3" in CodeAgent("openai/unused", imports=["sqlite3"]).system_prompt()
    assert "Instructions from the user" in CodeAgent("openai/unused", instructions="Use SI units.")._full_system_prompt()


def test_bad_options_say_what_to_do():
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        ToolCallingAgent("openai/unused", max_steps=0)
    with pytest.raises(ValueError, match="retry_temperature must be above 0 and at most 2, or None"):
        CodeAgent("openai/unused", retry_temperature=0)
    with pytest.raises(TypeError, match=r"unknown CodeAgent option\(s\) \['timout'\]"):
        CodeAgent("openai/unused", timout=3)
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        ToolCallingAgent("openai/unused", tools=[add, add])
    with pytest.raises(TypeError, match="model must be a model name"):
        ToolCallingAgent(42)


# -- ToolCallingAgent -------------------------------------------------------------------------------


def test_schema_violations_are_fed_back_and_corrected(scripted_server):
    scripted_server.script([
        tool_calls([("add", {"a": 1, "b": "two"})]),
        tool_calls([("add", '{"a": 1, "b": ')]),  # broken JSON from the model
        tool_calls([("add", {"a": 1, "b": 2})]),
        tool_calls([("final_answer", {"answer": 3})]),
    ])
    run = ToolCallingAgent(scripted_server.model(), tools=[add]).run("add one and two")
    assert run.state == "success" and run.output == 3
    first, second, third, _ = run.action_steps
    assert "b: 'two' is not of type 'integer'" in first.tool_calls[0].error
    assert first.tool_calls[0].result is None
    assert "not valid JSON" in second.tool_calls[0].error
    assert third.tool_calls[0].result == 3 and third.tool_calls[0].error is None
    # the model saw the validation error as the tool's result, with the schema to follow
    tool_message = scripted_server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == first.tool_calls[0].id
    assert "not of type 'integer'" in tool_message["content"] and '"required":["a","b"]' in tool_message["content"]
    assert {t["function"]["name"] for t in scripted_server.requests[0]["tools"]} == {"add", "final_answer"}


def test_parallel_tool_calls_run_concurrently(scripted_server):
    barrier = threading.Barrier(2, timeout=5)  # passes only if both calls are inside at once
    seen: list[str] = []

    @tool
    def slow_lookup(key: str) -> str:
        """Look a key up (blocking).

        Args:
            key: the key.
        """
        barrier.wait()
        seen.append(key)
        return key.upper()

    @tool
    async def async_lookup(key: str) -> str:
        """Look a key up (async).

        Args:
            key: the key.
        """
        await asyncio.sleep(0.2)
        return key * 2

    scripted_server.script([
        tool_calls([("slow_lookup", {"key": "a"}), ("slow_lookup", {"key": "b"}), ("async_lookup", {"key": "c"})]),
        tool_calls([("final_answer", {"answer": "done"})]),
    ])
    started = time.perf_counter()
    run = ToolCallingAgent(scripted_server.model(), tools=[slow_lookup, async_lookup]).run("look up a, b and c")
    assert run.state == "success", run.error
    calls = run.action_steps[0].tool_calls
    assert [(c.name, c.result, c.error) for c in calls] == [
        ("slow_lookup", "A", None), ("slow_lookup", "B", None), ("async_lookup", "cc", None)]
    assert sorted(seen) == ["a", "b"]
    assert time.perf_counter() - started < 5
    tool_messages = [m for m in scripted_server.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == ["A", "B", "cc"]


def test_json_in_text_fallback_for_models_without_tools(scripted_server):
    model = scripted_server.model()
    model.supports_tools = False  # as litellm reports for models without function calling
    scripted_server.script([
        text('Adding first.\n{"name": "add", "arguments": {"a": 2, "b": 2}}'),
        text("I think I am done."),  # no call: reminded of the format
        # an answer given beside a call that fails, before seeing its error, is refused ...
        text('[{"name": "add", "arguments": {"a": "x", "b": 1}}, {"name": "final_answer", "arguments": {"answer": 7}}]'),
        text('{"name": "final_answer", "arguments": {"answer": 4}}'),  # ... and given alone once it is seen
    ])
    agent = ToolCallingAgent(model, tools=[add])
    run = agent.run("add things")
    assert run.state == "success" and run.output == 4
    assert "call final_answer alone" in _last_content(scripted_server.requests[3])
    assert all("tools" not in r for r in scripted_server.requests)
    system = scripted_server.requests[0]["messages"][0]["content"]
    assert '"name": "<tool name>"' in system and "- add: Add two integers." in system
    assert "[add] 4" in _last_content(scripted_server.requests[1])
    assert "called no tool" in _last_content(scripted_server.requests[2])
    assert [c.result for c in run.action_steps[2].tool_calls] == [None, None]
    assert run.action_steps[2].tool_calls[1].error.startswith("not accepted")


def test_a_final_answer_batched_with_other_calls_is_accepted_after_they_run(scripted_server):
    seen: list[int] = []

    @tool
    def note(n: int) -> int:
        """Note a number.

        Args:
            n: the number.
        """
        seen.append(n)
        return n

    scripted_server.script([  # the answer first in the batch: the other calls still run, then it stands
        tool_calls([("final_answer", {"answer": 2}), ("note", {"n": 1}), ("note", {"n": 2})]),
    ])
    run = ToolCallingAgent(scripted_server.model(), tools=[note]).run("note and answer")
    assert run.state == "success", run.error
    assert run.output == 2 and sorted(seen) == [1, 2] and len(run.action_steps) == 1
    assert [(c.name, c.result, c.error) for c in run.action_steps[0].tool_calls] == [
        ("final_answer", 2, None), ("note", 1, None), ("note", 2, None)]


def test_a_tool_call_that_is_not_json_is_told_so(scripted_server):
    scripted_server.script([tool_calls([("", '{"name": "note", "arguments": {"n": 1')]),  # cut off
                            tool_calls([("final_answer", {"answer": "done"})])])
    run = ToolCallingAgent(scripted_server.model()).run("answer")
    assert run.action_steps[0].tool_calls[0].error.startswith("the tool call is not valid JSON")
    assert run.output == "done"


def test_max_steps_asks_for_a_final_answer(scripted_server):
    def responder(request: dict[str, Any]) -> Reply:
        if "used all your steps" in _last_content(request):
            return tool_calls([("final_answer", {"answer": "best guess"})])
        return tool_calls([("add", {"a": 1, "b": 1})])

    scripted_server.script(responder)
    run = ToolCallingAgent(scripted_server.model(), tools=[add], max_steps=3).run("never finishes")
    assert run.state == "max_steps"
    assert run.output == "best guess"
    assert len(scripted_server.requests) == 4 and len(run.action_steps) == 4
    assert isinstance(run.steps[-1], FinalAnswerStep) and run.steps[-1].output == "best guess"


def test_final_answer_checks_feed_back_and_continue(scripted_server):
    def must_be_even(answer: Any, run: Any) -> bool:
        if answer % 2:
            raise ValueError(f"{answer} is odd; the answer must be even")
        return True

    def not_zero(answer: Any, run: Any) -> bool:
        return answer != 0

    scripted_server.script([
        tool_calls([("final_answer", {"answer": 3})]),
        tool_calls([("final_answer", {"answer": 0})]),
        tool_calls([("final_answer", {"answer": 4})]),
    ])
    agent = ToolCallingAgent(scripted_server.model(), final_answer_checks=[must_be_even, not_zero])
    run = agent.run("pick an even number")
    assert run.state == "success" and run.output == 4
    assert [s.is_final for s in run.action_steps] == [False, False, True]
    assert "3 is odd; the answer must be even" in _last_content(scripted_server.requests[1])
    assert "check not_zero returned False" in _last_content(scripted_server.requests[2])


def test_streaming_events_arrive_in_order_and_usage_is_summed(scripted_server):
    scripted_server.script([
        tool_calls([("add", {"a": 20, "b": 22})], content="Let me add these.", usage=[100, 10]),
        tool_calls([("final_answer", {"answer": 42})], content="Done.", usage=[150, 5]),
    ])
    callbacks: list[str] = []
    agent = ToolCallingAgent(scripted_server.model(), tools=[add],
                             step_callbacks=[lambda step, run: callbacks.append(step.kind)])
    events = list(agent.run("add 20 and 22", stream=True))
    kinds = [type(e).__name__ for e in events]
    # The run (its id), the task, then per step: started, text deltas, completed; then the final answer and the run
    assert kinds[:3] == ["RunStarted", "StepCompleted", "StepStarted"]
    assert isinstance(events[1].step, TaskStep) and events[0].run is events[-1].run
    first_done = next(i for i, e in enumerate(events) if isinstance(e, StepCompleted) and isinstance(e.step, ActionStep))
    deltas = [e for e in events[:first_done] if isinstance(e, TextDelta)]
    assert len(deltas) > 1 and all(d.index == 1 for d in deltas)
    assert "".join(d.text for d in deltas) == "Let me add these."
    assert kinds[first_done + 1] == "StepStarted" and events[first_done + 1] == StepStarted(2)
    assert kinds[-2:] == ["StepCompleted", "RunCompleted"] and isinstance(events[-2].step, FinalAnswerStep)
    run = events[-1].run
    assert callbacks == ["task", "action", "action", "final"]
    assert run.output == 42
    assert [s.usage for s in run.action_steps] == [Usage(100, 10), Usage(150, 5)]
    assert run.usage.input_tokens == 250 and run.usage.output_tokens == 15


def test_async_api_and_astream(scripted_server):
    scripted_server.script([tool_calls([("final_answer", {"answer": "a"})])], key="FIRST")
    scripted_server.script([tool_calls([("final_answer", {"answer": "b"})])], key="SECOND")
    agent = ToolCallingAgent(scripted_server.model())

    async def main() -> tuple[Any, list[Any]]:
        run = await agent.arun("FIRST task")
        events = [e async for e in agent.astream("SECOND task")]
        return run, events

    run, events = asyncio.run(main())
    assert run.output == "a"
    assert isinstance(events[-1], RunCompleted) and events[-1].run.output == "b"


def test_planning_steps_every_n_steps(scripted_server):
    def responder(request: dict[str, Any]) -> Reply:
        if "write a short plan" in _last_content(request):
            return text(f"1. Facts: none.\n3. Plan: add numbers (plan {len(scripted_server.requests)})")
        if len([m for m in request["messages"] if m["role"] == "tool"]) >= 2:
            return tool_calls([("final_answer", {"answer": "ok"})])
        return tool_calls([("add", {"a": 1, "b": 2})])

    scripted_server.script(responder)
    run = ToolCallingAgent(scripted_server.model(), tools=[add], planning_interval=2).run("plan and add")
    assert run.state == "success"
    kinds = [s.kind for s in run.steps]
    assert kinds == ["task", "planning", "action", "action", "planning", "action", "final"]
    plans = [s for s in run.steps if isinstance(s, PlanningStep)]
    assert "tools" not in scripted_server.requests[0]  # planning asks for words, not calls
    # the action after a plan sees the current plan, and only that one
    last_action_request = scripted_server.requests[-1]
    shown = json.dumps(last_action_request["messages"])
    assert plans[1].plan.split("(")[-1] in shown and plans[0].plan.split("(")[-1] not in shown
    assert run.usage == sum((s.usage for s in run.steps if hasattr(s, "usage")), Usage())


def test_context_stays_bounded_on_long_runs(scripted_server):
    def responder(request: dict[str, Any]) -> Reply:
        if len(scripted_server.requests) >= 12:
            return tool_calls([("final_answer", {"answer": "done"})])
        return tool_calls([("add", {"a": len(scripted_server.requests), "b": 1000})])

    scripted_server.script(responder)
    run = ToolCallingAgent(scripted_server.model(), tools=[add], keep_steps=3, max_steps=20).run("add a lot")
    assert run.state == "success"
    sizes = [len(json.dumps(r["messages"])) for r in scripted_server.requests]
    full_step = sizes[2] - sizes[1]  # within the window a step adds its call and its result
    assert (sizes[11] - sizes[6]) / 5 < full_step / 3  # beyond it, one short line
    last = scripted_server.requests[-1]["messages"]
    assert sum(m["role"] == "tool" for m in last) == 3
    summary = next(m["content"] for m in last if "Earlier steps, summarised" in str(m.get("content")))
    assert '- step 1: add({"a": 1, "b": 1000}) -> ok' in summary
    assert "1001" not in summary  # observations are elided
    # Steps fold four at a time: requests 7 to 10 (steps 1-4 folded) start with the same messages,
    # so a prompt cache keeps serving that prefix.
    prefixes = [json.dumps(r["messages"][:3]) for r in scripted_server.requests[7:11]]
    assert len(set(prefixes)) == 1 and "Earlier steps, summarised" in prefixes[0]


def test_interrupt_cancels_the_model_call_and_keeps_the_steps(scripted_server):
    scripted_server.script([
        tool_calls([("add", {"a": 1, "b": 1})]),
        Reply(text="too slow", delay=20),
    ])
    agent = ToolCallingAgent(scripted_server.model(), tools=[add])
    events = []
    interrupted_at: list[float] = []  # timed from the interrupt: importing litellm may take seconds

    def interrupt() -> None:
        interrupted_at.append(time.perf_counter())
        agent.interrupt()

    for event in agent.run("interrupt me", stream=True):
        events.append(event)
        if isinstance(event, StepStarted) and event.index == 2:
            threading.Timer(0.3, interrupt).start()
    run = events[-1].run
    assert time.perf_counter() - interrupted_at[0] < 5
    assert run.state == "interrupted"
    assert run.action_steps[0].tool_calls[0].result == 2
    assert run.action_steps[1].error == "interrupted"
    # the agent can run again afterwards
    scripted_server.script([tool_calls([("final_answer", {"answer": "again"})])])
    assert agent.run("interrupt me again").output == "again"


def test_ctrl_c_during_a_stream_interrupts_and_still_delivers_the_run(scripted_server):
    """Kernel > Interrupt is SIGINT to the main thread, which is waiting inside the stream."""
    scripted_server.script([tool_calls([("add", {"a": 1, "b": 1})]), Reply(text="too slow", delay=20)])
    agent = ToolCallingAgent(scripted_server.model(), tools=[add])
    events = []
    interrupted_at: list[float] = []

    def ctrl_c() -> None:
        interrupted_at.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    for event in agent.run("interrupt me", stream=True):
        events.append(event)
        if isinstance(event, StepStarted) and event.index == 2:
            threading.Timer(0.3, ctrl_c).start()
    assert time.perf_counter() - interrupted_at[0] < 5
    stopped, done = events[-2:]
    assert isinstance(stopped, StepCompleted) and stopped.step.index == 2 and stopped.step.error == "interrupted"
    assert isinstance(done, RunCompleted) and done.run.state == "interrupted"
    assert done.run.action_steps[0].tool_calls[0].result == 2


class _SlowToDescribe:
    """A model that takes seconds to say whether it supports tools, as litellm's first import does."""

    def __init__(self, model: Any) -> None:
        self.model, self.model_id = model, model.model_id

    @property
    def supports_tools(self) -> bool:
        time.sleep(2)
        return True

    async def agenerate(self, *args: Any, **kwargs: Any) -> Any:
        return await self.model.agenerate(*args, **kwargs)


def test_an_interrupt_while_the_run_starts_is_not_lost(scripted_server):
    scripted_server.script([tool_calls([("final_answer", {"answer": 1})])])
    agent = ToolCallingAgent(_SlowToDescribe(scripted_server.model()))
    threading.Timer(0.5, agent.interrupt).start()
    run = agent.run("stop before the first step")
    assert run.state == "interrupted" and not scripted_server.requests  # stopped before asking the model
    assert [s.error for s in run.action_steps] == ["interrupted"]


def test_leaving_a_stream_early_stops_the_run(scripted_server):
    scripted_server.script([Reply(text="slow", delay=20)], key="ABANDON")
    scripted_server.script([tool_calls([("final_answer", {"answer": "next"})])], key="NEXT")
    agent = ToolCallingAgent(scripted_server.model())
    stream = agent.run("ABANDON this", stream=True)
    for event in stream:
        if isinstance(event, StepStarted):
            break
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 5
    assert agent.run("NEXT task").output == "next"  # not "already running"


def test_model_errors_end_the_run_with_a_reason(scripted_server):
    scripted_server.script([Reply(error=400, message="context too long")])
    run = ToolCallingAgent(scripted_server.model()).run("fail please")
    assert run.state == "error" and "context too long" in run.error
    assert run.action_steps[0].error == run.error  # the step that failed is kept, with the reason


# -- CodeAgent (each starts a sandbox kernel) --------------------------------------------------------


def test_final_answer_with_several_values_gives_them_as_one_tuple(scripted_server):
    scripted_server.script([
        text("```python\ntotal = 16765.75\nprint('South', total)\nfinal_answer()\n```"),
        text("```python\nfinal_answer('South', total)\n```"),  # a small model's pair
    ])
    with CodeAgent(scripted_server.model()) as agent:
        run = agent.run("which region, and how much?")
    assert "final_answer takes the answer: final_answer(value), or final_answer(a, b)" in run.action_steps[0].observation
    assert run.state == "success" and run.output == ("South", 16765.75)


def test_code_agent_recovers_from_errors_and_sees_displays(scripted_server):
    scripted_server.script([
        text("I know the answer without code."),
        text("Thought: use the data.\n```python\ntotal = sum(valuez)\n```"),
        text("Thought: typo, fix it.\n```python\ntotal = sum(values)\nprint('total', total)\n"
             "import matplotlib.pyplot as plt\n"
             "fig, ax = plt.subplots(figsize=(4, 3), dpi=100)\nax.plot(values)\nplt.show()\n"
             "print('x' * 5000)\n```\n"),
        text("```python\nfinal_answer(total * 2)\n```"),
    ])
    with CodeAgent(scripted_server.model(), max_observation_chars=600) as agent:
        run = agent.run("double the total", variables={"values": [1, 2, 3]})
    assert run.state == "success", run.error
    assert run.output == 12
    no_code, failed, fixed, final = run.action_steps
    assert no_code.code is None and "no code block" in no_code.observation
    assert failed.error.startswith("NameError") and "valuez" in failed.observation
    assert "total 6" in fixed.observation
    shown = re.search(r"\[displayed image/png (\d+)x(\d+) Figure \(axes 1: 1 series\)\]", fixed.observation)
    width, height = map(int, shown.groups())  # the figure's size, and what it shows (for a text-only model)
    assert 300 < width <= 400 and 200 < height <= 300  # a 4x3 inch figure at 100 dpi, trimmed to its ink
    assert "characters cut" in fixed.observation and len(fixed.observation) < 800
    assert final.is_final and final.execution.has_final_answer
    # every observation went back to the model
    requests = scripted_server.requests
    assert "values: list len=3: [1, 2, 3]" in requests[0]["messages"][1]["content"]
    assert "no code block" in _last_content(requests[1])
    assert "NameError" in _last_content(requests[2]) and "valuez" in _last_content(requests[2])
    assert shown.group(0) in _last_content(requests[3])
    assert requests[0]["stop"] == ["\n```\n"]


def test_code_action_calls_two_tools_in_a_loop_and_memory_continues(scripted_server):
    calls: list[tuple[str, Any]] = []

    @tool
    def price(item: str) -> float:
        """Price of an item in euros.

        Args:
            item: the item's name.
        """
        calls.append(("price", item))
        return {"apple": 0.5, "pear": 0.75}[item]

    @tool
    async def to_dollars(euros: float) -> float:
        """Convert euros to dollars.

        Args:
            euros: the amount in euros.
        """
        calls.append(("to_dollars", euros))
        return round(euros * 2, 2)

    scripted_server.script([
        text("```python\nprices = {}\nfor item in ['apple', 'pear']:\n"
             "    prices[item] = to_dollars(euros=price(item=item))\nprint(prices)\n```"),
        text("```python\nfinal_answer(prices)\n```"),
        text("```python\nfinal_answer(sum(prices.values()) + extra)\n```"),
    ])
    agent = CodeAgent(scripted_server.model(), tools=[price, to_dollars])
    try:
        run = agent.run("price the fruit")
        assert run.state == "success", run.error
        assert run.output == {"apple": 1.0, "pear": 1.5}
        assert calls == [("price", "apple"), ("to_dollars", 0.5), ("price", "pear"), ("to_dollars", 0.75)]
        assert "{'apple': 1.0, 'pear': 1.5}" in run.action_steps[0].observation
        system = scripted_server.requests[0]["messages"][0]["content"]
        assert "def to_dollars(euros: float) -> float:" in system
        sandbox = agent.sandbox
        follow_up = agent.run("now add the extra", variables={"extra": 10}, reset=False)
        assert follow_up.output == 12.5  # `prices` survived: same sandbox, same memory
        assert agent.sandbox is sandbox
        messages = scripted_server.requests[-1]["messages"]
        assert "price the fruit" in messages[1]["content"] and "New task" in json.dumps(messages)
    finally:
        agent.close()


class _Weather(Tool):
    """A tool holding an API key, as a real client would."""

    name = "weather"
    description = "Weather for a city."

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.seen: list[str] = []

    def forward(self, city: str) -> str:
        """Weather.

        Args:
            city: the city.
        """
        assert self.api_key.startswith("sk-")
        self.seen.append(city)
        return f"sunny in {city}"


def test_tool_secrets_never_enter_the_sandbox(scripted_server, monkeypatch):
    secret = "sk-live-7Hq2xT9v"
    monkeypatch.setenv("WEATHER_API_KEY", secret)
    probe = (
        "import os, inspect\n"
        "print('ENV', dict(os.environ))\n"
        "print('STUB', type(weather), getattr(weather, '__dict__', None), getattr(weather, '__closure__', None),\n"
        "      getattr(weather, '__defaults__', None), getattr(weather, '__kwdefaults__', None), weather.__doc__)\n"
        "print('CALL', weather(city='Oslo'))\n"
    )
    scripted_server.script([text(f"```python\n{probe}```"), text("```python\nfinal_answer('ok')\n```")])
    weather = _Weather(secret)
    with CodeAgent(scripted_server.model(), tools=[weather], imports=["os", "inspect"]) as agent:
        run = agent.run("check the weather")
        listing = json.dumps(agent.sandbox and _aio_run(agent.sandbox.variables()))
    stdout = run.action_steps[0].execution.stdout
    assert "ENV {" in stdout and "STUB" in stdout and "CALL sunny in Oslo" in stdout, stdout
    assert weather.seen == ["Oslo"]
    assert secret not in stdout and secret not in listing
    assert secret not in json.dumps(scripted_server.requests)


def _aio_run(coro: Any) -> Any:
    from agent_kernel import _aio

    return _aio.run_sync(coro)


def test_interrupt_stops_a_running_sandbox_action(scripted_server):
    scripted_server.script([text("```python\nimport time\nstarted = time.time()\ntime.sleep(30)\n```")])
    agent = CodeAgent(scripted_server.model())
    try:
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(agent.run("sleep for a long time")))
        worker.start()
        deadline = time.time() + 30
        while not scripted_server.requests and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the model answered; the sandbox is sleeping
        interrupted_at = time.perf_counter()
        agent.interrupt()
        worker.join(10)
        assert not worker.is_alive()
        assert time.perf_counter() - interrupted_at < 5
        run = result[0]
        assert run.state == "interrupted"
        assert run.action_steps[-1].code.endswith("time.sleep(30)") and run.action_steps[-1].error == "interrupted"
    finally:
        agent.close()


def test_agent_as_a_tool_of_another(scripted_server):
    scripted_server.script([text("```python\nimport math\nfinal_answer(math.factorial(5))\n```")], key="INNER-JOB")

    def manager(request: dict[str, Any]) -> Reply:
        results = [m for m in request["messages"] if m["role"] == "tool"]
        if results:
            return tool_calls([("final_answer", {"answer": f"the analyst says {results[-1]['content']}"})])
        return tool_calls([("analyst", {"task": "INNER-JOB: compute 5 factorial"})])

    scripted_server.script(manager, key="OUTER-JOB")
    with CodeAgent(scripted_server.model(), name="analyst", description="Runs Python to compute things.") as analyst:
        boss = ToolCallingAgent(scripted_server.model(), tools=[analyst])
        analyst_schema = next(t for t in boss.tools.values() if t.name == "analyst").openai_schema()
        assert analyst_schema["function"]["parameters"]["required"] == ["task"]
        run = boss.run("OUTER-JOB: ask the analyst for 5!")
    assert run.state == "success", run.error
    assert run.output == "the analyst says 120"
    assert run.action_steps[0].tool_calls[0].result == 120


def test_tool_calls_from_code_are_recorded_and_the_export_replays_them(scripted_server, tmp_path):
    host_calls: list[str] = []

    @tool
    def rate(currency: str) -> float:
        """Euros for one unit of a currency.

        Args:
            currency: the ISO code.
        """
        host_calls.append(currency)
        return {"USD": 0.9, "GBP": 1.2}[currency]

    code = ("rates = {c: rate(c) for c in ['USD', 'GBP']}\ntry:\n    rate(currency='XXX')\nexcept Exception as e:\n"
            "    print('no XXX rate')\nprint(rates)\nfinal_answer(round(100 * rates['USD'] + 50 * rates['GBP'], 2))")
    scripted_server.script([text(f"```python\n{code}\n```")])
    with CodeAgent(scripted_server.model(), tools=[rate]) as agent:
        run = agent.run("convert the amounts")
    assert run.state == "success" and run.output == 150.0, run.error
    calls = run.action_steps[0].tool_calls
    assert [(c.name, c.arguments, c.result) for c in calls] == [
        ("rate", {"currency": "USD"}, 0.9), ("rate", {"currency": "GBP"}, 1.2), ("rate", {"currency": "XXX"}, None)]
    assert [c.error for c in calls] == [None, None, "KeyError: 'XXX'"]
    assert host_calls == ["USD", "GBP", "XXX"]
    shown, _ = DisplayFormatter().format(run)  # how IPython shows a run as a cell's last value
    assert "→ rate(currency='GBP')\n  1.2" in shown["text/plain"] and "KeyError" in shown["text/plain"]
    assert "Final answer" in shown["text/html"] and "150.0" in shown["text/html"]

    nb = run.to_notebook(str(tmp_path / "run.ipynb"))
    NotebookClient(nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    rerun_stdout = "".join(o.text for o in code_cells[1].outputs if o.output_type == "stream")
    assert rerun_stdout == run.action_steps[0].execution.stdout == "no XXX rate\n{'USD': 0.9, 'GBP': 1.2}\n"
    assert code_cells[-1].outputs[0].data["text/plain"] == "150.0"
    assert host_calls == ["USD", "GBP", "XXX"]  # the re-run replayed the recorded results
    nbformat.validate(nb)


def test_code_that_redefines_a_tool_or_final_answer_is_refused_and_the_real_ones_run(scripted_server):
    scripted_server.script([
        text('```python\ndef add(a: int, b: int) -> int:\n    """Add."""\n    ...\n\nprint(add(a=2, b=3))\n```'),
        text("```python\nfinal_answer = print\nfinal_answer(1)\n```"),
        text("```python\nfor add in [1]:\n    pass\n```"),
        text("```python\ntotal = add(a=2, b=3)\nprint(total)\n```"),
        text("```python\nfinal_answer(total)\n```"),
    ])
    with CodeAgent(scripted_server.model(), tools=[add]) as agent:
        run = agent.run("add 2 and 3")
    assert run.state == "success", run.error
    assert run.output == 5
    redefined, reassigned, loop, called, _ = run.action_steps
    assert redefined.execution is None and redefined.tool_calls == []  # nothing ran
    assert "`add` is a tool: call it, do not define or assign it." in redefined.observation
    assert "`final_answer` is a tool" in reassigned.observation and reassigned.execution is None
    assert "`add` is a tool" in loop.observation
    assert "5" in called.observation and [c.result for c in called.tool_calls] == [5]
    assert "`add` is a tool" in _last_content(scripted_server.requests[1])


@pytest.mark.parametrize(
    ("code", "shadowed"),
    [
        ("import math as add", ["add"]),
        ("with open('f') as add:\n    pass", ["add"]),
        ("del add", ["add"]),
        ("if True:\n    (add := 1)", ["add"]),
        ("def f():\n    global add\n    add = 1", ["add"]),
        ("class add:\n    pass", ["add"]),
        ("def f(add):\n    add = 2\n    return add\nx = [add for add in range(3)]\nprint(add(a=1, b=2))", []),
        ("result = add(a=1, b=2)", []),
    ],
)
def test_shadowed_tools_finds_module_level_bindings_only(code: str, shadowed: list[str]):
    assert shadowed_tools(code, ["add"]) == shadowed
