"""An answer of another kind than the task asks for goes back once: a name for "how many", one entry
for "headcount by department"."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scripted_server import text

from agent_kernel.agents import CodeAgent
from agent_kernel.agents._asked import asked_per_group, asked_which, is_nan, is_one_value, states_amount

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


def test_one_value_is_a_name_or_a_number_not_a_table():
    assert all(is_one_value(v) for v in ("Finance", 34, 3.5, True))
    assert not any(is_one_value(v) for v in ({"Finance": 34}, [34], pd.Series([34]), None))


def test_nan_is_no_answer_in_any_form():
    import numpy as np

    assert all(is_nan(v) for v in (float("nan"), np.float64("nan"), np.float32("nan"), " NaN", "nan"))
    assert not any(is_nan(v) for v in (0.0, 1, True, "banana", None, [float("nan")]))


def test_a_nan_answer_is_sent_back(scripted_server):
    orders = pd.DataFrame({"price": [1.0, 2.0, 3.0, 4.0], "returned": [False, True, False, True]})
    scripted_server.script([
        text("```python\nr = orders[orders.returned]\nfinal_answer(r.price.corr(r.returned.astype(float)))\n```"),
        text("```python\nc = orders.price.corr(orders.returned.astype(float))\nprint(round(c, 2))\n```"),
        text("```python\nfinal_answer(round(c, 2))\n```"),
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("pearson correlation of price with returned", variables={"orders": orders})
    assert run.action_steps[0].error == "final answer sent back: it is NaN"
    assert "the answer is NaN: what computed it had nothing to work on" in run.action_steps[0].observation
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


def test_the_answer_checks_send_back_once_a_run(scripted_server):
    scripted_server.script([
        text("```python\nfinal_answer(people.department.iloc[0])\n```"),
        text("```python\nfinal_answer(people.department.iloc[1])\n```"),  # stands: the second answer
    ])
    with CodeAgent(scripted_server.model(), imports=["pandas"]) as agent:
        run = agent.run("headcount by department", variables={"people": PEOPLE})
    assert run.output == "Eng" and run.state == "success" and len(run.action_steps) == 2
