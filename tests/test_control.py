"""Issue 9, the analyst stays in control: review, budgets, stuck runs, figures the model sees,
provenance, and `%agent fix` / `explain`. Real sandboxes, litellm against the scripted server,
real notebooks through nbclient."""

from __future__ import annotations

import base64
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image
from scripted_server import Reply, ScriptedServer, text, tool_calls

from agent_kernel.agents import CodeAgent, ToolCallingAgent
from agent_kernel.agents._code import IMAGE_MAX_SIDE
from agent_kernel.agents._limits import UnpricedModelWarning
from agent_kernel.display import render_text
from agent_kernel.export import run_to_notebook
from agent_kernel.memory import ActionStep, Review, Run
from agent_kernel.review import Decision, ask
from agent_kernel.sandbox import Sandbox
from agent_kernel.tools import tool

PRICED = "gpt-4o-mini"  # litellm prices it: $0.15 per million input tokens


@tool
def lookup(city: str) -> str:
    """The region of a city.

    Args:
        city: the city.
    """
    return {"Lyon": "Rhone", "Nice": "Var"}.get(city, "unknown")


def _code(source: str) -> Reply:
    return text(f"Thought: next.\n```python\n{source}\n```\n")


def _user_texts(request: dict[str, Any]) -> str:
    """Everything the request showed the model after the task (observations, tool results, notes)."""
    parts = []
    for message in request["messages"][2:]:
        content = message.get("content")
        if isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if p.get("type") == "text")
        elif message["role"] in ("user", "tool"):
            parts.append(str(content or ""))
    return "\n".join(parts)


def _image_parts(request: dict[str, Any]) -> list[str]:
    return [p["image_url"]["url"] for m in request["messages"] if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "image_url"]


# -- review ------------------------------------------------------------------------------------------


def test_review_edit_and_decline_code_actions(scripted_server: Any, tmp_path: Path) -> None:
    scripted_server.script([
        _code("rows = 1 / 0"),
        _code("import os\nos.remove('data.csv')"),
        _code("final_answer(rows * 2)"),
    ])
    seen: list[str] = []

    def approve(step: ActionStep) -> Decision:
        seen.append(step.code or "")
        if step.index == 1:
            return Decision.edit("rows = 21\nprint('rows', rows)")
        if step.index == 2:
            return Decision.skip("never delete files")
        return Decision.run()

    with CodeAgent(scripted_server.model(), approve=approve) as agent:
        run = agent.run("count the rows")
    assert run.state == "success" and run.output == 42
    assert seen == ["rows = 1 / 0", "import os\nos.remove('data.csv')", "final_answer(rows * 2)"]
    edited, declined, final = run.action_steps
    assert edited.code == "rows = 21\nprint('rows', rows)" and edited.review.original == "rows = 1 / 0"
    assert edited.execution.stdout == "rows 21\n" and edited.error is None  # the edit ran, not the proposal
    assert declined.execution is None and declined.review.decision == "skip"
    assert final.review.decision == "run"
    # the model was told what ran instead, and why the second action was declined
    second, third = scripted_server.requests[1], scripted_server.requests[2]
    assert "edited it before it ran" in _user_texts(second) and "rows = 21" in _user_texts(second)
    assert "```python\nrows = 1 / 0\n```" in json.dumps(second["messages"][-2]["content"], ensure_ascii=False).replace("\\n", "\n")
    assert "declined to run it" in _user_texts(third) and "never delete files" in _user_texts(third)
    # the export shows the edit (the code that ran, and what the model had proposed) and the decline
    nb = run_to_notebook(run, tmp_path / "reviewed.ipynb")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    ran = next(c for c in code_cells if "rows = 21" in c.source)
    assert ran.metadata.agent_kernel["review"] == "edit" and ran.metadata.agent_kernel["proposed"] == "rows = 1 / 0"
    assert ran.outputs[0].text == "rows 21\n"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "edited by the reviewer before it ran" in markdown and "rows = 1 / 0" in markdown
    assert "declined by the reviewer: never delete files" in markdown
    assert "This code was not run" in markdown and not any("os.remove" in c.source for c in code_cells)


def test_review_stop_keeps_the_step_and_ends_the_run(scripted_server: Any) -> None:
    scripted_server.script([tool_calls([("lookup", {"city": "Lyon"})]), tool_calls([("lookup", {"city": "Nice"})])])
    agent = ToolCallingAgent(scripted_server.model(), tools=[lookup],
                             approve=lambda step: Decision.stop("enough") if step.index == 2 else Decision.run())
    run = agent.run("regions")
    assert run.state == "stopped" and run.error == "stopped by the reviewer: enough"
    first, stopped = run.action_steps
    assert stopped.error is None  # the review says why; the step did not fail
    shown = render_text(run)
    assert shown.count("enough") == 2 and "Error" not in shown  # the step's header, then the run's end
    assert first.tool_calls[0].result == "Rhone"
    assert stopped.review.decision == "stop" and stopped.tool_calls[0].result is None  # never ran
    assert len(scripted_server.requests) == 2


def test_review_edits_and_declines_tool_calls(scripted_server: Any) -> None:
    scripted_server.script([
        tool_calls([("lookup", {"city": "Paris"})]),
        tool_calls([("lookup", {"city": "Lyon"})]),
        tool_calls([("final_answer", {"answer": "done"})]),
    ])
    asked: list[int] = []

    async def approve(step: ActionStep) -> Decision:  # async approvers are awaited
        asked.append(step.index)
        if step.index == 1:
            return Decision.edit('[{"name": "lookup", "arguments": {"city": "Nice"}}]')
        return Decision.skip("not Lyon again")

    run = ToolCallingAgent(scripted_server.model(), tools=[lookup], approve=approve).run("regions")
    assert run.state == "success" and asked == [1, 2]  # a lone final_answer is not reviewed
    edited, declined, _ = run.action_steps
    assert [(c.arguments, c.result) for c in edited.tool_calls] == [({"city": "Nice"}, "Var")]
    assert edited.review.original is not None and "Paris" in edited.review.original
    assert declined.tool_calls[0].result is None and declined.error is None
    tool_message = next(m for m in scripted_server.requests[2]["messages"][::-1] if m["role"] == "tool")
    assert "declined to run it" in tool_message["content"] and "not Lyon again" in tool_message["content"]
    assert "edited them before they ran" in _user_texts(scripted_server.requests[1])


def test_input_prompt_reads_each_choice() -> None:
    step = ActionStep(index=3, code="x = 1")
    answers = iter(["maybe", "e", "x = 2", "print(x)", ".", ])
    shown: list[str] = []
    decision = ask(step, read=lambda prompt: next(answers), write=shown.append)
    assert decision == Decision.edit("x = 2\nprint(x)")
    assert "Step 3" in shown[0] and "x = 1" in shown[0] and "Answer r, e, s or t." in shown
    answers = iter(["s", "too slow"])
    assert ask(step, read=lambda prompt: next(answers), write=shown.append) == Decision.skip("too slow")


def test_one_chooser_decides_widgets_or_input_for_the_agent_and_the_magic() -> None:
    from agent_kernel import review

    assert review.approver("input") is ask and review.approver("auto") is ask  # no ipykernel here: input()
    assert not review.uses_widgets("auto") and not review.uses_widgets("input")
    with pytest.raises(review.WidgetsUnavailable, match="needs ipywidgets"):
        review.uses_widgets("widgets")


def test_an_approver_that_does_not_decide_fails_the_run_clearly(scripted_server: Any) -> None:
    scripted_server.script([tool_calls([("lookup", {"city": "Lyon"})])])
    run = ToolCallingAgent(scripted_server.model(), tools=[lookup], approve=lambda step: True).run("x")
    assert run.state == "error" and "must return a Decision" in run.error
    assert run.action_steps[0].tool_calls[0].result is None  # nothing ran


# -- budgets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "usage", "delay", "steps", "said"),
    [
        ({"max_tokens": 2500}, [1000, 10], 0.0, 3, "max_tokens 3,030 of 2,500"),
        ({"max_cost": 0.04}, [100_000, 5], 0.0, 3, "max_cost $0.0450 of $0.0400"),
    ],
)
def test_each_budget_stops_before_the_next_model_call(
    scripted_server: Any, tmp_path: Path, limit: dict[str, float], usage: list[int], delay: float, steps: int, said: str
) -> None:
    scripted_server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})], usage=usage, delay=delay))
    run = ToolCallingAgent(scripted_server.model(PRICED), tools=[lookup], **limit).run("loop forever")
    assert run.state == "budget_exceeded" and said in run.error and "spent $" in run.error
    assert len(scripted_server.requests) == steps == len(run.action_steps)  # no call after the limit
    assert all(c.result == "Rhone" for s in run.action_steps for c in s.tool_calls)  # every step kept
    assert run.usage.total_tokens == steps * sum(usage)
    nb = run_to_notebook(run, tmp_path / "budget.ipynb")
    assert "budget_exceeded" in nb.cells[-1].source and said in nb.cells[-1].source
    assert len([c for c in nb.cells if c.cell_type == "code"]) == steps


def test_a_run_is_given_its_limits_as_a_checked_value(scripted_server: Any) -> None:
    from agent_kernel.agents import AgentOptions, Limits

    scripted_server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})], usage=[1000, 10]))
    agent = ToolCallingAgent(scripted_server.model(PRICED), tools=[lookup], max_steps=6)
    run = agent.run("loop forever", limits=Limits(max_steps=6, max_tokens=2500))  # this run only
    assert run.state == "budget_exceeded" and "max_tokens 3,030 of 2,500" in run.error
    assert agent.limits == Limits(max_steps=6) and agent.limits.max_tokens is None  # the agent's own unchanged
    with pytest.raises(ValueError, match="max_cost must be a positive number"):
        Limits(max_cost=0)
    with pytest.raises(TypeError, match="limits must be a Limits"):
        agent.run("x", limits={"max_cost": 1})  # type: ignore[call-overload]
    # one record of the shared options: both agents take and check the same ones
    code = CodeAgent("openai/unused", keep_steps=3, max_tokens=10)
    assert code.options == ToolCallingAgent("openai/unused", keep_steps=3, max_tokens=10).options
    assert code.options == AgentOptions(keep_steps=3, max_tokens=10) and code.limits.max_tokens == 10
    with pytest.raises(ValueError, match="keep_steps must be at least 1"):
        CodeAgent("openai/unused", keep_steps=0)


def test_max_time_stops_a_long_action_and_keeps_the_sandbox_usable(scripted_server: Any, tmp_path: Path) -> None:
    scripted_server.script([_code("x = 41"), _code("print('started', flush=True)\nimport time\ntime.sleep(60)\nx = 0")])
    with Sandbox(timeout=120) as sandbox:  # started first: its start-up would count as the agent's time
        run = CodeAgent(scripted_server.model(), sandbox=sandbox, max_time=3).run("work slowly")
        after = sandbox.execute("print(x + 1)")
    assert run.state == "budget_exceeded" and run.duration < 10  # not the 60 s sleep, nor the 120 s timeout
    assert "during step 2, whose action was stopped (max_time 3 s)" in run.error and "spent $" in run.error
    first, stopped = run.action_steps
    assert first.execution.error is None and stopped.code.endswith("x = 0") and stopped.error == run.error
    assert len(scripted_server.requests) == 2  # no model call after the budget ran out
    assert after.stdout == "42\n"  # the sleep was interrupted, the kernel and its variables kept
    nb = run_to_notebook(run, tmp_path / "slow.ipynb")
    assert "budget_exceeded" in nb.cells[-1].source and "max_time 3 s" in nb.cells[-1].source


def test_an_action_is_not_started_once_a_slow_model_call_used_up_the_time(scripted_server: Any) -> None:
    scripted_server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})], delay=0.8))
    run = ToolCallingAgent(scripted_server.model(), tools=[lookup], max_time=1.2).run("loop forever")
    assert run.state == "budget_exceeded" and "during step 2" in run.error and "spent $" in run.error
    assert len(scripted_server.requests) == 2
    done, stopped = run.action_steps
    assert done.tool_calls[0].result == "Rhone" and stopped.tool_calls[0].result is None


def test_time_waiting_for_the_reviewer_does_not_count(scripted_server: Any) -> None:
    scripted_server.script([tool_calls([("lookup", {"city": "Lyon"})]), tool_calls([("final_answer", {"answer": "Rhone"})])])

    waits: list[float] = []

    def slow_reviewer(step: ActionStep) -> Decision:
        began = time.perf_counter()
        time.sleep(1.5)  # longer than the whole max_time
        waits.append(time.perf_counter() - began)
        return Decision.run()

    began = time.perf_counter()
    run = ToolCallingAgent(scripted_server.model(), tools=[lookup], approve=slow_reviewer, max_time=1.0).run("x")
    wall = time.perf_counter() - began
    assert run.state == "success"
    assert run.action_steps[0].tool_calls[0].result == "Rhone"
    # Nor in the times shown: exact bounds, not timings (the whole call less the reviewer's own waits).
    assert run.duration <= wall - sum(waits) and run.action_steps[0].duration <= wall - sum(waits)


def test_an_unpriced_model_counts_tokens_and_says_so_once(scripted_server: Any) -> None:
    scripted_server.script(lambda request: tool_calls([("final_answer", {"answer": 1})], usage=[50, 5]))
    agent = ToolCallingAgent(scripted_server.model("no-price-anywhere"), max_cost=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = agent.run("one"), agent.run("two")
    said = [w for w in caught if issubclass(w.category, UnpricedModelWarning)]
    assert len(said) == 1 and "no price for openai/no-price-anywhere" in str(said[0].message)
    assert first.usage.cost == second.usage.cost == 0.0 and first.usage.total_tokens == 55


def test_bad_budgets_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="max_cost must be a positive number or None"):
        ToolCallingAgent("openai/unused", max_cost=0)
    with pytest.raises(TypeError, match="approve must be callable"):
        ToolCallingAgent("openai/unused", approve="yes")


# -- stuck runs --------------------------------------------------------------------------------------


def test_a_repeated_error_gets_a_note_then_ends_as_stuck(scripted_server: Any) -> None:
    failing = [_code(f"value = {{'a': 1}}['missing']  # try {n}") for n in range(6)]  # different code, same error
    scripted_server.script(failing)
    with CodeAgent(scripted_server.model(), max_steps=10) as agent:
        run = agent.run("read the missing key")
    assert run.state == "stuck" and "KeyError: 'missing'" in run.error and "4 times in a row" in run.error
    assert len(run.action_steps) == 4 and all(s.execution is not None for s in run.action_steps)
    assert len(scripted_server.requests) == 4
    notes = ["repeating yourself" in _user_texts(r) for r in scripted_server.requests]
    assert notes == [False, False, False, True]  # the note follows the third repeat
    assert run.to_notebook().metadata.agent_kernel["state"] == "stuck"
    # Greedy decoding would repeat itself: after the second time, the requests sample.
    assert [r.get("temperature") for r in scripted_server.requests] == [None, None, 0.7, 0.7]


@pytest.mark.parametrize(("options", "model_options", "sampled"), [
    ({"retry_temperature": None}, {}, None),  # switched off
    ({"retry_temperature": 1.2}, {}, 1.2),
    ({}, {"temperature": 1.0}, 1.0),  # the model's own is higher already: left as it is
])
def test_the_retry_temperature_is_the_agents_setting(scripted_server: Any, options: dict[str, Any],
                                                     model_options: dict[str, Any], sampled: float | None) -> None:
    scripted_server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})]))
    run = ToolCallingAgent(scripted_server.model(**model_options), tools=[lookup], **options).run("loop")
    assert run.state == "stuck"
    assert scripted_server.requests[-1].get("temperature") == sampled


def test_the_same_action_four_times_ends_as_stuck(scripted_server: Any) -> None:
    scripted_server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})]))
    run = ToolCallingAgent(scripted_server.model(), tools=[lookup], max_steps=10).run("loop")
    assert run.state == "stuck" and "the same action 4 times" in run.error
    assert len(run.action_steps) == 4 and all(s.error is None for s in run.action_steps)


def test_two_failing_attempts_in_turn_get_a_note_then_end_as_stuck(scripted_server: Any) -> None:
    attempts = [_code("import no_such_module"), _code("value = {'a': 1}['missing']")]
    scripted_server.script(attempts * 4)
    with CodeAgent(scripted_server.model(), max_steps=10) as agent:
        run = agent.run("two ways, neither works")
    assert run.state == "stuck" and "the same two attempts in turn, 5 steps in a row" in run.error
    assert [s.error.split(":")[0] for s in run.action_steps] == ["ImportError", "KeyError"] * 2 + ["ImportError"]
    notes = ["back and forth between the same two attempts" in _user_texts(r) for r in scripted_server.requests]
    assert notes == [False, False, False, False, True]  # the note follows the fourth step of the cycle


def test_the_same_code_right_after_it_ran_is_not_run_again(scripted_server: Any) -> None:
    scripted_server.script([_code("counter = globals().get('counter', 0) + 1\nprint(counter)")] * 2
                           + [_code("final_answer(counter)")])
    with CodeAgent(scripted_server.model(), max_steps=10) as agent:
        run = agent.run("count once")
    assert run.state == "success" and run.output == 1  # the copy did not run: counter is still 1
    again = run.action_steps[1]
    assert again.execution is None and "exactly the code of the previous step" in again.observation
    assert "exactly the code of the previous step" in _user_texts(scripted_server.requests[2])


def test_different_errors_in_turn_with_progress_between_are_not_stuck(scripted_server: Any) -> None:
    scripted_server.script([_code("import no_such_module"), _code("x = 1"), _code("value = {'a': 1}['missing']"),
                            _code("x = 2"), _code("import no_such_module"), _code("final_answer(x)")])
    with CodeAgent(scripted_server.model(), max_steps=10) as agent:
        run = agent.run("some fail, some work")
    assert run.state == "success" and run.output == 2 and len(run.action_steps) == 6


# -- figures -----------------------------------------------------------------------------------------

PLOT = ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(16, 8), dpi=100)\n"
        "ax.plot([1, 2, 3], label='a'); ax.plot([3, 2, 1], label='b')\n"
        "ax.set_title('Sales'); ax.set_xlabel('month'); ax.set_ylabel('euros'); plt.show()")


@pytest.mark.parametrize("model_name", [PRICED, "scripted"])
def test_figures_reach_a_model_that_can_see_and_are_described_otherwise(scripted_server: Any, model_name: str) -> None:
    scripted_server.script([_code(PLOT), _code("final_answer('seen')")])
    with CodeAgent(scripted_server.model(model_name)) as agent:
        run = agent.run("plot sales")
    assert run.state == "success"
    after_plot = scripted_server.requests[1]
    description = "Figure (axes 1: title 'Sales', x 'month', y 'euros', 2 series)"
    assert description in _user_texts(after_plot)  # every model reads what the figure shows
    images = _image_parts(after_plot)
    if model_name == PRICED:  # litellm says gpt-4o-mini takes images
        assert agent.vision and len(images) == 1 and images[0].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
        produced = run.action_steps[0].execution.displays[0]["image/png"]
        original = Image.open(io.BytesIO(base64.b64decode(produced)))
        assert max(original.size) > IMAGE_MAX_SIDE and max(png.size) == IMAGE_MAX_SIDE  # scaled down
        assert "see the last figures" in after_plot["messages"][0]["content"]
    else:
        assert not agent.vision and images == []
        assert "cannot see the pixels" in after_plot["messages"][0]["content"]
    assert _image_parts(scripted_server.requests[0]) == []  # nothing before a figure exists


# -- display -----------------------------------------------------------------------------------------


def test_a_run_shows_why_it_stopped_what_was_reviewed_and_where_it_came_from() -> None:
    from IPython.core.formatters import DisplayFormatter

    run = Run(task="t", agent="code", model="openai/m", state="budget_exceeded", error="budget used up (max_tokens)")
    run.steps += [ActionStep(index=1, code="x = 2", review=Review("edit", original="x = 1")),
                  ActionStep(index=2, code="rm()", review=Review("skip", reason="no <b>deleting</b>"))]
    data, metadata = DisplayFormatter().format(run)  # as IPython shows `run` on a cell's last line
    assert metadata == {"agent_kernel": {"model": "openai/m", "run_id": run.id, "step": "run"}}
    text = data["text/plain"]
    assert "Stopped: budget used up (max_tokens)" in text and "Error" not in text
    assert "Step 1 · edited by the reviewer before it ran" in text and "The model had proposed:\n  x = 1" in text
    assert "Step 2 · declined by the reviewer: no <b>deleting</b>" in text
    assert "The model had proposed" in data["text/html"] and "<b>deleting</b>" not in data["text/html"]


# -- in notebooks ------------------------------------------------------------------------------------

from test_magics import _setup, _stdout

APPROVER = '''\
from agent_kernel.review import Decision

def approve(step):
    if step.index == 1:
        return Decision.edit(step.code.replace("1 / 0", "len(sales)"))
    if step.index == 2:
        return Decision.skip("no network from here")
    return Decision.run()

def lookup(city: str) -> str:
    """Region of a city.

    Args:
        city: the city.
    """
    return "Rhone"

%config AgentMagics.approver = "approve"
'''


def _notebook(cells: list[str], cwd: Path) -> tuple[nbformat.NotebookNode, dict[int, dict[str, Any]]]:
    """Run cells in a real kernel; also return each cell's execute_reply (payloads live there)."""
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    replies: dict[int, dict[str, Any]] = {}

    def keep(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        replies[cell_index] = execute_reply

    NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True, on_cell_executed=keep,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, replies


def _displays(cell: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]


def test_notebook_review_budgets_session_cap_and_provenance(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([_code("rows = 1 / 0\nprint('rows', rows)"), _code("import urllib.request"),
                       _code("final_answer(rows)")], key="Count the rows")
        server.script(lambda request: tool_calls([("lookup", {"city": "Lyon"})], usage=[100_000, 5]),
                      key="Look up Lyon forever")
        nb, _ = _notebook([
            _setup(server.url),
            APPROVER,
            "%%agent code --review --out rows\nCount the rows of {sales}",
            "print(rows, _agent_run.id, _agent_run.action_steps[0].code)",
            "%agent export reviewed.ipynb",
            "%agent config session_max_cost=0.02",
            f"%%agent tools -m openai/{PRICED} --tools lookup --max-steps 9\nLook up Lyon forever",
            "print(_agent_run.state, len(_agent_run.action_steps))",
            "%%agent tools --tools lookup\nLook up Lyon once more",
            "%agent show 1",
        ], tmp_path)
        reviewed = [r for r in server.requests if "Count the rows" in json.dumps(r["messages"][:2])]
    assert not [o for c in nb.cells for o in c.outputs if o.output_type == "error"]
    rows, run_id, ran = _stdout(nb.cells[3]).split(" ", 2)
    assert rows == "3" and ran.strip() == "rows = len(sales)\nprint('rows', rows)"
    assert "declined to run it" in _user_texts(reviewed[2]) and "no network from here" in _user_texts(reviewed[2])
    # provenance: every output the run displayed names the model, the run and the step
    stamps = [o.metadata["agent_kernel"] for o in _displays(nb.cells[2])]
    assert stamps and all(s["model"] == "openai/scripted" and s["run_id"] == run_id for s in stamps)
    assert [s["step"] for s in stamps] == ["task", 1, 2, 3, "final", "run"]
    assert _displays(nb.cells[9])[0].metadata["agent_kernel"]["run_id"] == run_id
    # the export shows the edit and the decline, and every cell says where it came from
    exported = nbformat.read(tmp_path / "reviewed.ipynb", as_version=4)
    assert all(c.metadata["agent_kernel"]["run_id"] == run_id for c in exported.cells)
    edited = next(c for c in exported.cells if c.cell_type == "code" and "len(sales)" in c.source)
    assert edited.metadata["agent_kernel"]["review"] == "edit" and "1 / 0" in edited.metadata["agent_kernel"]["proposed"]
    assert any("declined by the reviewer: no network from here" in c.source for c in exported.cells)
    # the session cap stopped the priced run after two calls ($0.03 >= $0.02) and refuses the next one
    assert "session_max_cost = 0.02" in _stdout(nb.cells[5])
    assert _stdout(nb.cells[7]).strip() == "budget_exceeded 2"
    assert "session's cost cap is used up" in _stdout(nb.cells[8]) and "UsageError" in _stdout(nb.cells[8])
    footer = _displays(nb.cells[6])[-1].data["text/plain"]
    assert "Stopped: budget used up before the next model call" in footer and "budget_exceeded" in footer


def test_review_asks_through_input_in_a_real_kernel(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.script([_code("print('first')"), _code("final_answer(3 + 4)")], key="Ask me")
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
        prompts: list[str] = []
        answers = iter(["s", "show me something else", "r"])

        def answer(message: dict[str, Any]) -> None:
            prompts.append(message["content"]["prompt"])
            kc.input(next(answers))

        try:
            kc.execute_interactive(_setup(server.url) + "\n%agent config review_ui=input", timeout=60)
            kc.execute_interactive("%%agent code --review --quiet --out n\nAsk me first", allow_stdin=True,
                                   stdin_hook=answer, timeout=120)
            printed: list[dict[str, Any]] = []
            kc.execute_interactive("print(n, [s.review.decision for s in _agent_run.action_steps])",
                                   output_hook=printed.append, timeout=60)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    assert prompts == ["[r]un, [e]dit, [s]kip or s[t]op? ", "Why skip? (the agent is told) ",
                       "[r]un, [e]dit, [s]kip or s[t]op? "]
    out = "".join(m["content"].get("text", "") for m in printed if m["msg_type"] == "stream")
    assert out.strip() == "7 ['skip', 'run']"
    assert "show me something else" in _user_texts(server.requests[1])


def test_fix_and_explain_the_last_error_without_touching_the_notebook(tmp_path: Path) -> None:
    fixed = 'total = df["Amount"].sum()\nprint(total)'
    with ScriptedServer() as server:
        server.script([
            _code('total = df["amount"].sum()'),  # reproduce
            _code("final_answer('total = df[\"amount\"].sum()')"),  # a "fix" that still fails
            _code("df.rename(columns={'Amount': 'amount'}, inplace=True)\nprint(df.columns.tolist())"),
            _code(f"final_answer({fixed!r})"),
        ], key="Reproduce the error, find its cause")
        server.script(["The column is called `Amount`, with a capital A: use df['Amount']."])  # explain
        nb, replies = _notebook([
            _setup(server.url) + "\ndf = pd.DataFrame({'Amount': [10, 20, 12], 'city': ['Lyon', 'Nice', 'Lyon']})"
            "\nsnapshot = df.copy()\n%agent config review_ui=input",  # no buttons: nbclient cannot click
            'total = df["amount"].sum()\nprint(total)',
            "%agent explain",
            "%agent fix",
            "print('total' in globals(), df.equals(snapshot), list(df.columns), _agent_fix.verified)",
            "%agent fix --apply",
            "%agent runs",
        ], tmp_path)
        fixing = [r for r in server.requests if "Reproduce the error" in json.dumps(r["messages"][:2])]
        explaining = [r for r in server.requests if r not in fixing]
    assert [o.ename for o in nb.cells[1].outputs if o.output_type == "error"] == ["KeyError"]
    # explain: one call, told the cell, the error and the variables; the answer shown with provenance
    assert len(explaining) == 1
    asked = explaining[0]["messages"][1]["content"]
    assert 'total = df["amount"].sum()' in asked and "KeyError: 'amount'" in asked and "Amount" in asked
    explanation = _displays(nb.cells[2])[0]
    assert "with a capital A" in explanation.data["text/plain"]
    assert explanation.metadata["agent_kernel"]["step"] == "explain"
    # fix: the error reproduced in the sandbox, a failing fix rejected there, the verified one shown as a diff
    assert "KeyError: 'amount'" in fixing[0]["messages"][1]["content"]
    assert "KeyError" in _user_texts(fixing[1])  # what the sandbox said, not the notebook
    assert "still fails on fresh copies of the variables: KeyError" in _user_texts(fixing[2])
    assert len(fixing) == 4
    diff = _displays(nb.cells[3])[0]
    assert '-total = df["amount"].sum()' in diff.data["text/plain"]
    assert '+total = df["Amount"].sum()' in diff.data["text/plain"]
    assert "<script" not in diff.data["text/html"] and diff.metadata["agent_kernel"]["model"] == "openai/scripted"
    # nothing ran in the notebook: no `total`, df as it was (the sandbox's rename stayed there)
    assert _stdout(nb.cells[4]).strip() == "False True ['Amount', 'city'] True"
    # --apply reuses the verified fix (no new model call) and puts it in the next cell
    payload = replies[5]["content"]["payload"]
    assert [(p["source"], p["text"]) for p in payload] == [("set_next_input", fixed)]
    assert "the fixed cell is in the next cell" in _stdout(nb.cells[5])
    # `%agent runs` lists the fix by the cell it fixed, not by the agent's internal prompt
    listed = _displays(nb.cells[6])[0].data["text/plain"]
    assert '%agent fix: total = df["amount"].sum() print(total)' in listed and "A cell in the user" not in listed
