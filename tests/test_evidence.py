"""Honest answers: each number in a final answer is looked up in what the run's steps showed."""

from __future__ import annotations

import json

from hypothesis import given
from nbclient import NotebookClient
from hypothesis import strategies as st
from sample_tools import add
from scripted_server import text, tool_calls

from agent_kernel.agents import CodeAgent, ToolCallingAgent
from agent_kernel.agents._code import prose_answer
from agent_kernel.agents._evidence import numbers, read_off, weigh
from agent_kernel.display import mime_bundle, render_text
from agent_kernel.memory import ActionStep, FinalAnswerStep, RunRecord
from agent_kernel.sandbox._records import Execution


def _run(task: str, *printed: str) -> RunRecord:
    steps = [ActionStep(index=i, code="print(x)", execution=Execution(
        "print(x)", outputs=[{"output_type": "stream", "name": "stdout", "text": out}]))
        for i, out in enumerate(printed, start=1)]
    return RunRecord(task=task, agent="code", model="m", steps=list(steps))


# -- extraction and matching ------------------------------------------------------------------------


def test_numbers_reads_separators_decimals_exponents_and_percentages():
    found = [(n.text, n.value, n.places, n.percent) for n in numbers(
        "grew 9.6% (1,234,567.89 rows, 9.6e-02, .5) in 2024; x1 step2 5th 2024-06 2024-06-30 are names")]
    assert found == [("9.6%", 9.6, 1, True), ("1,234,567.89", 1234567.89, 2, False),
                     ("9.6e-02", 0.096, 3, False), (".5", 0.5, 1, False), ("2024", 2024.0, 0, False)]


def test_a_value_read_off_an_output_is_found_there_as_a_whole_word():
    run = _run("which month?", "date\n2024-05    10629.50\n2024-06     9856.00\n")
    assert read_off("2024-06", run) and read_off(("South", 9856.0), run) and read_off({"m": "2024-05"}, run)
    assert not read_off("2024-0", run) and not read_off("seen", run) and not read_off(True, run)
    assert read_off(9856, run)  # read off 9856.00
    assert not read_off("Tuesday", _run("which day?", "Tuesday\n"))  # printed alone: nothing to misread
    assert not read_off(36.14, _run("how many a day?", "36.13764880952381\n"))
    assert not read_off(("South", 16765.75), _run("which region?", "South 16765.75\n"))


def test_tolerant_matching_at_the_answers_precision():
    run = _run("growth?", "growth 0.09615, rows 1234567, change -0.0312, share 42.5 %")
    evidence = weigh("Growth was 9.6% over 1,234,567 rows; it fell 3.1%; 0.425 of them; 9.62 is not shown", run)
    assert evidence.sources == {"9.6%": 1, "1,234,567": 1, "3.1%": 1, "0.425": 1}
    assert evidence.unverified == ["9.62"]  # more precise than anything printed: not computed


def test_the_last_step_that_showed_a_number_is_its_source_and_the_task_is_not_evidence():
    run = _run("the top 5 by revenue: is growth 10%?", "revenue 12.5", "mean 12.5")
    evidence = weigh("The top 5 have a mean of 12.5; growth is not 10% but 11%", run)
    assert evidence.sources == {"5": 0, "12.5": 2, "10%": 0}  # 0: only the task gave it
    assert evidence.unverified == ["11%"]


def test_a_number_written_as_a_literal_in_the_answering_code_was_not_computed():
    execution = Execution('final_answer(f"{g:.1%} growth, not 12%")', has_final_answer=True,
                          final_answer="9.6% growth, not 12%")
    step = ActionStep(index=1, code=execution.code, execution=execution)
    run = RunRecord(task="growth?", agent="code", model="m", steps=[step])
    evidence = weigh("9.6% growth, not 12% (10% rounded)", run)
    assert evidence.sources == {"9.6%": 1, "10%": 1} and evidence.unverified == ["12%"]


def test_values_that_state_no_number_are_not_weighed():
    run = _run("t", "1")
    assert weigh(None, run).unverified == [] and weigh({"a": 3}, run).unverified == []
    assert weigh(3, run).unverified == ["3"] and weigh(1.0, run).sources == {"1.0": 1}


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), st.integers(0, 6), st.sampled_from(
    ["{x!r}", "{x}", "{x:.8g}", "{x:.3e}", "{x:,.6f}", "{x:.4%}"]))
def test_a_number_python_printed_is_found_at_any_coarser_precision(x: float, places: int, printed: str):
    shown = printed.format(x=x)
    run = _run("compute it", f"result: {shown}")
    value = float(shown.replace(",", "").rstrip("%")) / (100 if shown.endswith("%") else 1)
    written = shown.split("e")[0].replace("%", "")
    digits = len(written.partition(".")[2]) - (int(shown.split("e")[1]) if "e" in shown else 0)
    digits += 2 if shown.endswith("%") else 0  # the printed precision as a fraction: no answer claims more
    coarser = min(places, max(digits, 0))
    answers = [f"{value:.{coarser}f}", f"{value:,.{coarser}f}"]
    if coarser >= 2:
        answers.append(f"{value * 100:.{coarser - 2}f}%")
    for answer in answers:
        assert weigh(f"It is {answer}.", run).unverified == [], (shown, answer)


def test_prose_answer_drops_labels():
    assert prose_answer("Thought: I have it.\nFinal answer: **9.6%**") == "9.6%"
    assert prose_answer("Thought: done.\nThe growth was 9.6%.") == "done.\nThe growth was 9.6%."


# -- runs end to end: the scripted server, a real sandbox --------------------------------------------


def test_a_prose_answer_after_an_observation_ends_the_run_with_its_sources_and_unverified_numbers(
        scripted_server, tmp_path):
    scripted_server.script([
        text("Thought: growth first.\n```python\ng = (548 - 500) / 500\nprint('growth', g)\n```"),
        text("Thought: I have the result.\nFinal answer: growth was 9.6%, about 15% of the 500 units."),
    ])
    with CodeAgent(scripted_server.model(), check_numbers=False) as agent:
        run = agent.run("growth from 500 to 548?")
    assert run.state == "success", run.error
    assert run.output == "growth was 9.6%, about 15% of the 500 units."
    final = run.steps[-1]
    assert isinstance(final, FinalAnswerStep)
    assert final.sources == {"9.6%": 1, "500": 0} and run.unverified == final.unverified == ["15%"]
    assert run.action_steps[-1].error is None  # the prose was the answer, not a format error
    assert json.loads(run.to_json())["unverified"] == ["15%"]
    shown = render_text(run)
    assert "unverified: 15% was never computed" in shown and "9.6% from step 1; 500 from the task" in shown
    html = mime_bundle(run)["text/html"]
    assert "unverified: 15% was never computed" in html and "9.6% from step 1" in html
    notebook = run.to_notebook(str(tmp_path / "run.ipynb"))
    heading = next(c.source for c in notebook.cells if c.source.startswith("## Final answer"))
    assert "**unverified: 15% was never computed**" in heading and "9.6% from step 1" in heading
    NotebookClient(notebook, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    last = notebook.cells[-1]  # no final_answer ran: the answer cell states the prose answer
    assert last.outputs[0]["data"]["text/plain"] == repr(run.output)


def test_prose_before_any_observation_is_still_told_to_write_code(scripted_server):
    scripted_server.script([
        text("The answer is 42."),
        text("```python\nx = 6 * 7\nprint(x)\n```"),
        text("Six times seven is 42."),
    ])
    with CodeAgent(scripted_server.model()) as agent:
        run = agent.run("six times seven")
    assert run.state == "success", run.error
    first = run.action_steps[0]
    assert first.error == "no code in the reply" and "no code block" in first.observation
    assert run.output == "Six times seven is 42." and run.steps[-1].sources == {"42": 2} and run.unverified == []
    assert "unverified" not in render_text(run) and "42 from step 2" in render_text(run)


def test_an_answer_never_printed_is_unverified_in_the_display_and_the_export(scripted_server, tmp_path):
    scripted_server.script([text("```python\nfinal_answer('revenue grew 12%')\n```")])
    with CodeAgent(scripted_server.model(), check_numbers=False) as agent:
        run = agent.run("how much did revenue grow?")
    assert run.state == "success" and run.output == "revenue grew 12%"
    assert run.unverified == ["12%"] and run.steps[-1].sources == {}
    assert "unverified: 12% was never computed" in render_text(run)
    notebook = run.to_notebook(str(tmp_path / "run.ipynb"))
    assert any("unverified: 12% was never computed" in c.source for c in notebook.cells if c.cell_type == "markdown")


def test_a_tool_result_is_evidence_and_the_final_answer_call_is_not(scripted_server):
    scripted_server.script([
        tool_calls([("add", {"a": 40, "b": 2})]),
        tool_calls([("final_answer", {"answer": "40 + 2 = 42, twice that is 84"})]),
    ])
    run = ToolCallingAgent(scripted_server.model(), tools=[add], check_numbers=False).run("add forty and two")
    assert run.state == "success"
    assert run.steps[-1].sources == {"42": 1} and run.unverified == ["40", "2", "84"]
    assert "unverified: 40, 2 and 84 were never computed" in render_text(run)


# -- the check before answering: a number nothing computed is sent back once ---------------------------


def test_an_answer_with_a_number_never_computed_is_sent_back_once_and_the_computed_one_stands(scripted_server):
    scripted_server.script([
        text("```python\nfinal_answer('East, $12,000')\n```"),
        text("```python\nby_region = {'East': 3 * 4000 + 500}\nprint(by_region)\n```"),
        text("Final answer: East, $12,500"),
    ])
    with CodeAgent(scripted_server.model()) as agent:
        run = agent.run("which region sold most, and how much?")
    assert run.state == "success", run.error
    first = run.action_steps[0]
    assert not first.is_final and first.error == "final answer sent back: it states numbers that no output showed"
    assert "the answer states 12,000, which no output above shows" in first.observation
    assert "Compute the answer in code and print it" in scripted_server.requests[1]["messages"][-1]["content"]
    assert run.output == "East, $12,500" and run.unverified == [] and run.steps[-1].sources == {"12,500": 2}


def test_an_answer_given_again_after_it_was_sent_back_stands_marked_unverified(scripted_server):
    scripted_server.script([
        text("```python\nx = add(40, 2)\nprint(x)\n```"),
        text("Final answer: 42, twice that is 84"),
        text("Final answer: 42, twice that is 84"),
    ])
    with CodeAgent(scripted_server.model(), tools=[add]) as agent:
        run = agent.run("add forty and two")
    assert run.state == "success" and len(run.action_steps) == 3
    assert run.action_steps[1].error is not None and "84, which no output above shows" in run.action_steps[1].observation
    assert run.action_steps[2].error is None  # once a run: the second answer is not sent back again
    assert run.output == "42, twice that is 84" and run.unverified == ["84"] and run.steps[-1].sources == {"42": 1}


def test_a_tool_calling_agent_with_tools_is_sent_back_to_call_one_and_without_tools_is_not(scripted_server):
    scripted_server.script([
        tool_calls([("final_answer", {"answer": "about 84"})]),
        tool_calls([("add", {"a": 42, "b": 42})]),
        tool_calls([("final_answer", {"answer": "84"})]),
    ])
    run = ToolCallingAgent(scripted_server.model(), tools=[add]).run("twice forty-two")
    assert run.state == "success" and len(run.action_steps) == 3, run.error
    sent_back = run.action_steps[0].tool_calls[0]
    assert sent_back.error is not None and "84, which no tool result above shows" in sent_back.error
    assert run.output == "84" and run.unverified == [] and run.steps[-1].sources == {"84": 2}

    scripted_server.script([tool_calls([("final_answer", {"answer": "about 84"})])])
    run = ToolCallingAgent(scripted_server.model()).run("twice forty-two")  # no tool to compute with
    assert run.state == "success" and len(run.action_steps) == 1 and run.unverified == ["84"]


def test_an_answer_batched_with_python_that_failed_is_refused(scripted_server):
    from agent_kernel.base_tools import PythonInterpreterTool

    scripted_server.script([
        tool_calls([("python_interpreter", {"code": "import pandas as pd\npd.read_csv('sales.csv')"}),
                    ("final_answer", {"answer": "sales"})]),  # written before the error came back
        tool_calls([("final_answer", {"answer": "no sales table"})]),
    ])
    with PythonInterpreterTool(imports=["pandas"]) as python:
        run = ToolCallingAgent(scripted_server.model(), tools=[python]).run("what is in sales.csv?")
    failed, refused = run.action_steps[0].tool_calls
    assert failed.error is not None and failed.error.startswith("the code raised FileNotFoundError\n")
    assert refused.error is not None and run.action_steps[0].error.startswith("python_interpreter: the code raised")
    assert run.output == "no sales table" and len(run.action_steps) == 2


def test_a_how_many_answered_without_a_number_is_sent_back_once(scripted_server):
    scripted_server.script([
        text("```python\nfinal_answer(people.name.iloc[0])\n```"),  # a name, for "how many"
        text("```python\nhired = int((people.year == 2020).sum())\nprint(hired)\n```"),
        text("```python\nfinal_answer(f'{hired} people')\n```"),
    ])
    import pandas as pd

    people = pd.DataFrame({"name": ["Ann", "Bo", "Cy"], "year": [2020, 2021, 2020]})
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("How many people were hired in 2020?", variables={"people": people})
    first = run.action_steps[0]
    assert first.error == "final answer sent back: the task asks for an amount and it states none"
    assert "the task asks how many, but the answer 'Ann' gives no amount" in first.observation
    assert run.output == "2 people" and run.state == "success" and run.steps[-1].sources == {"2": 3}


def test_answers_whose_numbers_were_shown_or_have_none_are_not_sent_back(scripted_server):
    scripted_server.script([
        text("```python\ntotal = sum(range(10))\nfinal_answer(f'the total is {total}')\n```"),
    ])
    with CodeAgent(scripted_server.model()) as agent:
        run = agent.run("add 0 to 9")
        assert run.state == "success" and len(run.action_steps) == 1 and run.steps[-1].sources == {"45": 1}
        scripted_server.script([text("```python\nfinal_answer('South')\n```")])
        run = agent.run("which region, North or South?")  # a name the task gave is not a guess
        assert run.state == "success" and len(run.action_steps) == 1 and run.output == "South"
