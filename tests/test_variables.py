"""What the model is told about a task's DataFrames: each column's range, values, gaps and date text."""

from __future__ import annotations

import pandas as pd
from scripted_server import text

from agent_kernel.agents import CodeAgent
from agent_kernel.agents._variables import MAX_COLUMNS, describe_variable


def test_a_frame_is_described_column_by_column() -> None:
    frame = pd.DataFrame({
        "day": pd.to_datetime(["2025-01-03", "2025-02-01", "2025-01-15"]),
        "ordered": ["03/14/2025", "12/01/2025", "01/02/2025"],
        "region": ["North", "South", "North"],
        "units": [5, None, 12],
        "remote": [True, False, True],
        "empty": [None, None, None],
    })
    dtype = {name: str(t) for name, t in frame.dtypes.items()}  # pandas' own names (its version's)
    lines = describe_variable(frame).splitlines()
    assert lines == [
        "DataFrame, 3 rows x 6 columns:",
        f"    day: {dtype['day']}, 2025-01-03 to 2025-02-01",
        f"    ordered: {dtype['ordered']}, dates stored as text, like '03/14/2025' (pd.to_datetime parses them)",
        f"    region: {dtype['region']}, 2 values: 'North', 'South'",
        "    units: float64, 5.0 to 12.0, 1 missing",
        "    remote: bool, 2 True",
        f"    empty: {dtype['empty']}, all missing, 3 missing",
    ]


def test_a_wide_table_says_which_column_names_its_rows() -> None:
    budget = pd.DataFrame({"region": ["North", "South", "East"], "Q1": [1, 2, 3], "Q2": [4, 5, 6]})
    assert describe_variable(budget).splitlines()[-1] == (
        "    (one row per region; the rows are numbered 0, 1, ...: .set_index('region') labels them by region, "
        "so that idxmax() and sum(axis=1) give a region)")
    assert "one row per" not in describe_variable(budget.set_index("region"))  # labelled already
    assert "one row per" not in describe_variable(pd.DataFrame({"region": ["N", "N"], "units": [1, 2]}))


def test_a_long_table_says_how_to_make_one_column_per_name() -> None:
    metrics = pd.DataFrame({"month": ["2025-01", "2025-01", "2025-02", "2025-02"],
                            "metric": ["signups", "churn", "signups", "churn"], "value": [5.0, 1.0, 7.0, 2.0]})
    assert describe_variable(metrics, "metrics").splitlines()[-1] == (
        "    (long format: one row per month and metric, the numbers in 'value'. One column per metric: "
        "wide = metrics.pivot(index='month', columns='metric', values='value'), then wide['signups'])")
    repeated = pd.concat([metrics, metrics])  # a (month, metric) twice: pivot would refuse it
    two_numbers = metrics.assign(target=1.0)  # which numbers is not known
    assert not any("long format" in describe_variable(f) for f in (repeated, two_numbers, metrics.iloc[:2]))


def test_many_values_and_many_columns_stay_short() -> None:
    names = pd.DataFrame({"name": [f"Person {i:03d}" for i in range(100)]})
    assert describe_variable(names).splitlines()[1] == (
        f"    name: {names.dtypes['name']}, 100 distinct values, e.g. 'Person 000', 'Person 001', 'Person 002'")
    wide = pd.DataFrame({f"c{i}": [i] for i in range(MAX_COLUMNS + 5)})
    lines = describe_variable(wide).splitlines()
    assert len(lines) == MAX_COLUMNS + 2 and lines[-1] == "    ... 5 more columns: c30, c31, c32, c33, c34"
    assert describe_variable([1, 2]) == "list len=2: [1, 2]"  # other values: the codec's one-line preview


def test_the_model_reads_the_description_in_the_task(scripted_server) -> None:
    scripted_server.script([text("```python\nfinal_answer(len(orders))\n```")])
    orders = pd.DataFrame({"order_date": ["03/14/2025", "12/01/2025"], "price": [9.5, 20.0]})
    with CodeAgent(scripted_server.model()) as agent:
        run = agent.run("how many orders?", variables={"orders": orders})
    assert run.output == 2
    task = scripted_server.requests[0]["messages"][1]["content"]
    assert (f"- orders: DataFrame, 2 rows x 2 columns:\n    order_date: {orders.dtypes['order_date']}, dates stored as "
            "text, like '03/14/2025'") in task
    assert "    price: float64, 9.5 to 20.0" in task


def test_describing_a_variable_does_not_import_pandas() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom agent_kernel.agents._variables import describe_variable\n"
            "print(describe_variable([1, 2]), 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "list len=2: [1, 2] False", done.stderr
