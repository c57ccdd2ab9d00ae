"""An answer of another kind than the task asks for goes back (twice a run at most, each time for
another reason): a name for "how many", one entry for "headcount by department"; one that stands is
recorded as doubtful."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scripted_server import text

from agent_kernel.agents import CodeAgent
from agent_kernel.agents._code import typed_answer
from agent_kernel.agents._asked import (
    asked_pair,
    asked_per_group,
    asked_which,
    gives_pair,
    is_nan_or_inf,
    is_one_value,
    states_amount,
)
from agent_kernel.observation import FrameFacts

COLUMNS = ["name", "department", "region", "hired", "timestamp", "order_id"]


@pytest.mark.parametrize(("answer", "amount"), [
    ("11", True), ("11 people", True), ("In 2020, 11 people were hired", True), ("$625,157.32", True),
    ("0", True), ("0.5%", True), ("North: 42", True),
    ("Person 015", False), ("Sensor 3", False), ("Sensor #3", False), ("007", False), ("Finance", False), ("", False),
])
def test_an_amount_is_a_number_that_is_not_part_of_a_name(answer, amount):
    assert states_amount(answer) is amount


@given(st.integers(min_value=0, max_value=10**9))
def test_any_count_written_out_is_an_amount(count):
    assert states_amount(f"{count:,} rows") and states_amount(str(count))


@pytest.mark.parametrize(("task", "group"), [
    ("headcount by department", "department"),
    ("units sold per region, as a table", "region"),
    ("total payroll per Department", "Department"),
    ("average salary for each department", "department"),
    ("orders per regions", "regions"),
    ("which department pays best on average?", None),  # asks for one
    ("the region with the most revenue, by region", None),
    ("average visits per day across the site", None),  # no column "day": a rate, not a table
    ("by how many percent did South grow?", None),
    ("revenue by product", None),  # no such column
])
def test_a_value_per_group_is_asked_only_by_a_column_given(task, group):
    assert asked_per_group(task, COLUMNS) == group


def test_which_of_a_text_column_is_asked_by_its_name():
    text = {"segment", "region", "name"}
    assert asked_which("which segment spends the most?", text) == "segment"
    assert asked_which("What regions grew?", text) == "regions"
    assert asked_which("which month had the most orders?", text) is None  # not a text column given
    assert asked_which("how many segments are there?", text) is None


def test_which_and_an_amount_is_asked_together():
    text = ["page", "region", "department"]
    assert asked_pair("which page has the worst average bounce rate, and what is it?", text) == ("page", "what is it")
    assert asked_pair("Which region brought in the most revenue, and how much?", text) == ("region", "how much")
    assert asked_pair("which department pays least, and its average salary", text) == ("department", "its average salary")
    assert asked_pair("lowest-paid department and its average salary", text) == ("department", "its average salary")
    assert asked_pair("payroll per department and its share", text) is None  # no one department asked for
    assert asked_pair("which region brought in the most revenue?", text) is None
    assert asked_pair("how much did customers spend in total?", text) is None  # no "which"
    from agent_kernel.agents._asked import mismatch

    found = mismatch((156, 0.2), "(156, 0.2)", "which page bounces most, and what is it?",
                     [FrameFacts(("page",), frozenset({"page"}))])
    assert found is not None and found.kind == "half_pair"  # a row position is not the page
    assert [gives_pair(a) for a in (("South", 3.5), {"South": 3.5}, "South: 3.5", "South", 3.5, "Person 007")] == [
        True, True, True, False, False, False]


def test_one_value_is_a_name_or_a_number_not_a_table():
    assert all(is_one_value(v) for v in ("Finance", 34, 3.5, True))
    assert not any(is_one_value(v) for v in ({"Finance": 34}, [34], pd.Series([34]), None))


def test_nan_or_infinity_is_no_answer_in_any_form():
    import numpy as np

    assert all(is_nan_or_inf(v) for v in (float("nan"), np.float64("nan"), np.float32("nan"), " NaN", "nan",
                                           float("inf"), -np.inf, "inf", "-Infinity"))
    assert not any(is_nan_or_inf(v) for v in (0.0, 1, True, "banana", "info", None, 1e308, ["nan", 1.5],
                                              pd.DataFrame({"a": [np.nan]})))
    # a pair, a mapping or a short Series holding one answers nothing either ({'page': '/pricing', 'rate': inf})
    holding = ({"page": "/pricing", "bounce_rate": float("inf")}, ("/pricing", np.nan), [1.0, float("nan")],
               pd.Series({"A": 1.0, "B": np.nan}))
    assert all(is_nan_or_inf(v) for v in holding)
    assert not is_nan_or_inf(pd.Series([np.nan] + [1.0] * 30))  # a long table with a gap is a table, not no answer


def test_which_of_a_text_column_is_answered_by_one_of_its_values():
    from agent_kernel.agents._asked import mismatch
    from agent_kernel.agents._prompts import CODE_SEND_BACK
    from agent_kernel.observation import frame_facts

    frames = frame_facts({"people": PEOPLE, "budget": pd.DataFrame({"region": ["North", "South"], "Q1": [1, 2]})}).values()

    def kind(answer, task="which department has the most people?"):
        found = mismatch(answer, repr(answer), task, frames)
        return found and found.kind

    assert [kind(a) for a in ("Eng", "ops", "Ops has the most, 2 people")] == [None, None, None]
    assert kind("Sales") == "not_listed" and kind("North") == "not_listed"  # none, or another column's value
    assert kind("North", "which regions have a Q1 over 1?") is None and kind("Q1", "which region?") == "not_listed"
    found = mismatch("North", "'North'", "which department?", frames)
    assert found is not None and found.words["values"] == "'Eng', 'Ops'"
    assert "names none of its values ('Eng', 'Ops')" in CODE_SEND_BACK.not_listed.format(**found.words)
    many = frame_facts({"t": pd.DataFrame({"name": [f"n{i}" for i in range(60)]})}).values()
    assert mismatch("zz", "'zz'", "which name?", many) is None  # too many values to be a set of names


def test_a_name_typed_in_that_no_output_showed_is_sent_back_and_then_marked(scripted_server):
    scripted_server.script([
        text("```python\ncounts = people.groupby('department').size()\nprint(counts.max())\n```"),
        text("```python\nfinal_answer('Ops')\n```"),  # a guess from the task's list of departments
        text("```python\nfinal_answer('ops')\n```"),  # again: it stands, marked
        text("```python\nprint(counts.idxmax())\n```"),
        text("```python\nfinal_answer('Eng')\n```"),  # printed: read, not guessed
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        guessed = agent.run("which department has the most people?", variables={"people": PEOPLE})
        shown = agent.run("which department has the most people?", variables={"people": PEOPLE}, reset=False)
    sent_back = guessed.action_steps[1]
    assert sent_back.error == "final answer sent back: it names a value of the data that no output showed"
    assert "the answer states 'Ops', which no output above shows: nothing computed it" in sent_back.observation
    assert guessed.output == "ops" and guessed.unverified == ["'ops'"] and guessed.doubted
    assert shown.output == "Eng" and shown.unverified == [] and not shown.doubted


def test_the_variable_holding_a_table_per_group_is_found_in_the_code():
    from agent_kernel.agents._code import grouped_by

    codes = ["by_region = df.groupby('region')['units'].sum()", "x = 1",
             "merged = a.merge(b)\ntotal = merged.groupby(by=['country'])['value'].sum().sort_values()", "oops("]
    assert grouped_by(codes, "country") == "total" and grouped_by(codes, "regions") == "by_region"
    assert grouped_by(codes, "segment") is None


@pytest.mark.parametrize(("code", "typed"), [
    ("final_answer('2024-06')", "'2024-06'"),
    ("x = 1\nfinal_answer(answer=-3.5)", "-3.5"),
    ("final_answer(('South', 16765.75))", "('South', 16765.75)"),
    ("final_answer({'East': 1, 'West': 2})", "{'East': 1, 'West': 2}"),
    ("final_answer(by_month.idxmax())", None),
    ("final_answer((best, 16765.75))", None),  # a name in it: computed
    ("final_answer(f'{best}')", None),
    ("final_answer(True)", None),
    ("print('2024-06')", None),
    ("final_answer('x'", None),  # does not parse
])
def test_an_answer_typed_into_the_code_is_told_from_a_computed_one(code, typed):
    assert typed_answer(code) == typed


def test_a_nan_answer_is_sent_back(scripted_server):
    orders = pd.DataFrame({"price": [1.0, 2.0, 3.0, 4.0], "returned": [False, True, False, True]})
    scripted_server.script([
        text("```python\nr = orders[orders.returned]\nfinal_answer(r.price.corr(r.returned.astype(float)))\n```"),
        text("```python\nc = orders.price.corr(orders.returned.astype(float))\nprint(round(c, 2))\n```"),
        text("```python\nfinal_answer(round(c, 2))\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("pearson correlation of price with returned", variables={"orders": orders})
    assert run.action_steps[0].error == "final answer sent back: it is or holds NaN or an infinity"
    assert "the answer is nan: what computed it had nothing to work on" in run.action_steps[0].observation
    assert run.output == 0.45 and run.state == "success"


PEOPLE = pd.DataFrame({"name": ["Ann", "Bo", "Cy", "Di"], "department": ["Eng", "Eng", "Ops", "Eng"],
                       "hired": ["2020-01-05", "2021-03-01", "2020-07-09", "2019-02-02"]})


def test_one_entry_for_a_table_per_group_is_sent_back_once(scripted_server):
    scripted_server.script([
        text("```python\ncounts = people.groupby('department').size()\nprint(counts)\n```"),
        text("```python\nfinal_answer(counts.idxmax())\n```"),  # one entry of the table asked for
        text("```python\nfinal_answer(counts.to_dict())\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("headcount by department", variables={"people": PEOPLE})
    sent_back = run.action_steps[1]
    assert sent_back.error == "final answer sent back: the task asks for a value per group and it gives one"
    assert "the task asks for a value per department, but the answer 'Eng' is one value" in sent_back.observation
    assert "(the Series a groupby made: counts)" in sent_back.observation  # the code's own name for it
    assert run.state == "success" and run.output == {"Eng": 3, "Ops": 1} and len(run.action_steps) == 3


def test_a_name_for_how_many_is_sent_back_even_when_it_holds_digits(scripted_server):
    scripted_server.script([
        text("```python\nhired = people[people.hired.str.startswith('2020')]\nprint(len(hired))\n```"),
        text("```python\nfinal_answer(f'Person {7:03d}')\n```"),  # an id, for "how many"
        text("```python\nfinal_answer(len(hired))\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("how many people were hired in 2020?", variables={"people": PEOPLE})
    assert "the answer 'Person 007' gives no amount" in run.action_steps[1].observation
    assert run.output == 2 and run.state == "success"


def test_a_row_position_for_which_is_sent_back(scripted_server):
    scripted_server.script([
        text("```python\ncounts = people.groupby('department').size().reset_index()\nprint(counts)\n```"),
        text("```python\nfinal_answer(counts.index[0])\n```"),  # a row position, for "which department"
        text("```python\nfinal_answer(people.department.value_counts().idxmax())\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("which department has the most people?", variables={"people": PEOPLE})
    assert "the task asks which department, but the answer 0 is a number, not a department" in (
        run.action_steps[1].observation)
    assert run.output == "Eng" and run.state == "success"


def test_a_name_alone_for_which_and_how_many_is_sent_back(scripted_server):
    scripted_server.script([
        text("```python\ncounts = people.department.value_counts()\nprint(counts)\n```"),
        text("```python\nfinal_answer(counts.idxmax())\n```"),  # the name, not how many
        text("```python\nfinal_answer((counts.idxmax(), int(counts.max())))\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("which department has the most people, and how many?", variables={"people": PEOPLE})
    sent_back = run.action_steps[1]
    assert sent_back.error == "final answer sent back: the task asks which one and an amount and it gives one of them"
    assert ("the task asks which department and how many, but the answer 'Eng' is not both the department"
            in sent_back.observation)
    assert run.output == ("Eng", 3) and run.state == "success"


def test_an_answer_typed_in_after_reading_an_output_is_sent_back(scripted_server):
    scripted_server.script([
        text("```python\ncounts = people.department.value_counts()\nprint(counts)\n```"),
        text("```python\nfinal_answer('Ops')\n```"),  # misread from the output
        text("```python\nfinal_answer(counts.idxmax())\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("which department has the most people?", variables={"people": PEOPLE})
    sent_back = run.action_steps[1]
    assert sent_back.error == "final answer sent back: its value was typed into the code, not computed"
    assert "final_answer was given 'Ops' typed into the code" in sent_back.observation
    assert run.output == "Eng" and run.state == "success"


def test_a_table_for_how_many_is_sent_back_and_every_kind_has_its_words(scripted_server):
    from agent_kernel.agents._asked import WHY
    from agent_kernel.agents._prompts import CODE_SEND_BACK, TOOLS_SEND_BACK

    assert all(getattr(CODE_SEND_BACK, kind) and getattr(TOOLS_SEND_BACK, kind) for kind in WHY)
    scripted_server.script([
        text("```python\nhired = people.hired.str.startswith('2020')\nprint(hired)\n```"),
        text("```python\nfinal_answer(hired)\n```"),  # the whole mask, for "how many"
        text("```python\nfinal_answer(int(hired.sum()))\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("how many people were hired in 2020?", variables={"people": PEOPLE})
    assert run.action_steps[1].error == "final answer sent back: the task asks for one value and it gives many"
    assert "the task asks for one value (how many), but the answer" in run.action_steps[1].observation
    assert run.output == 2 and run.state == "success"


def test_a_name_for_a_date_in_a_given_form_is_sent_back():
    from agent_kernel.agents._asked import mismatch

    def kind(answer, task="worst day for units? answer the date as YYYY-MM-DD"):
        found = mismatch(answer, repr(answer), task, [FrameFacts(("day", "region", "units"), frozenset({"region"}))])
        return found and found.kind

    rates = pd.Series(range(100), dtype=float)
    assert kind(rates, "what's the return rate, in percent?") == "many_values"  # 100 values for one
    assert kind(rates.head(5), "what's the return rate, in percent?") is None  # few: perhaps asked
    assert kind(rates, "the return rate per region") is None
    assert kind("East") == "not_a_date" and kind(pd.Timestamp("2025-01-03")) is None and kind("2025-01-03") is None
    assert kind("2025-01", "which month? (YYYY-MM)") is None and kind(pd.Period("2025-01", "M"), "which month? YYYY-MM") is None
    assert kind(12, "which month? (YYYY-MM)") == "not_a_date" and kind("East", "worst day?") is None


def test_the_answer_checks_send_back_twice_a_run_each_for_another_reason_and_record_what_stands(scripted_server):
    from agent_kernel.display import render_text

    scripted_server.script([
        text("```python\nfinal_answer(people.department.iloc[0])\n```"),  # one entry for a table per group
        text("```python\nfinal_answer(people.department.iloc[1])\n```"),  # the same reason: stands
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("headcount by department", variables={"people": PEOPLE})
        assert run.output == "Eng" and run.state == "success" and len(run.action_steps) == 2
        assert run.mismatch == run.steps[-1].mismatch == "the task asks for a value per group and it gives one"
        assert run.doubted and "unverified: the task asks for a value per group and it gives one" in render_text(run)
        assert "success, unverified" in render_text(run)

        scripted_server.script([
            text("```python\nprint(people.shape[1])\nprint(len(people))\n```"),
            text("```python\nfinal_answer(4)\n```"),  # read off the output: typed in
            text("```python\nfinal_answer(people.name)\n```"),  # a table for how many: another reason
            text("```python\nfinal_answer(people.name.tolist())\n```"),  # two sent back: stands
        ])
        run = agent.run("how many people are there?", variables={"people": PEOPLE})
    assert [s.error for s in run.action_steps[1:3]] == [
        "final answer sent back: its value was typed into the code, not computed",
        "final answer sent back: the task asks for one value and it gives many"]
    assert run.output == ["Ann", "Bo", "Cy", "Di"] and len(run.action_steps) == 4
    assert run.state == "success" and run.mismatch == "the task asks for one value and it gives many"
