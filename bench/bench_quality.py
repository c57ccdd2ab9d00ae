"""Answer quality on analysts' questions: our CodeAgent, our ToolCallingAgent and smolagents' CodeAgent.

Questions are phrased as analysts type them ("which region grew fastest", "how many customers
churned in Q2") over tables generated here with a fixed seed, in the shapes real data comes in:
sales by day, people and salaries, web traffic by hour, two tables to join, missing values, dates
as strings, wide and long formats. Each expected answer is computed by pandas here and judged
programmatically: a name, a number within a tolerance, a small table, or a name and a number.

All three agents run on one model, side by side:
  code   our CodeAgent, the tables passed as variables (copied into its sandbox kernel);
  tools  our ToolCallingAgent with the python_interpreter tool, the tables passed as variables (pushed into it);
  smol   smolagents' CodeAgent (LiteLLMModel, the same model name and base), tables via additional_args.

    nice -n 10 .venv/bin/python bench/bench_quality.py [--model local/qwen2.5-coder-1.5b]
        [--api-base URL] [--agents code,tools,smol] [--only ID,ID] [--limit N] [--stride N] [--list]
        [--json out.json [--resume]]

smolagents needs the `bench` extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SEED = 20261202
AGENTS = ("code", "tools", "smol")
MAX_STEPS = 8


# ---- the tables ---------------------------------------------------------------------------------------


def make_tables(seed: int = SEED) -> dict[str, Any]:
    """Every table the questions ask about, the same for one seed."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    days = pd.date_range("2025-01-01", "2025-12-31", freq="D")
    regions = ["North", "South", "East", "West"]
    growth = {"North": 0.10, "South": 0.35, "East": -0.05, "West": 0.20}
    sales = pd.DataFrame([
        {"date": day, "region": region,
         "units": int(rng.poisson(40 * (1 + growth[region] * i / len(days)))),
         "price": round(float(rng.uniform(9, 11)), 2)}
        for i, day in enumerate(days) for region in regions])
    sales["revenue"] = (sales["units"] * sales["price"]).round(2)

    departments = ["Engineering", "Sales", "Marketing", "Support", "Finance"]
    base = {"Engineering": 120_000, "Sales": 80_000, "Marketing": 75_000, "Support": 55_000, "Finance": 90_000}
    n_people = 150
    dept = rng.choice(departments, n_people)
    people = pd.DataFrame({
        "employee_id": np.arange(1, n_people + 1),
        "name": [f"Person {i:03d}" for i in range(1, n_people + 1)],
        "department": dept,
        "age": rng.integers(22, 65, n_people),
        "salary": [round(base[d] * float(rng.uniform(0.7, 1.4)), -2) for d in dept],
        "hired": [f"{int(y)}-{int(m):02d}-{int(d):02d}" for y, m, d in
                  zip(rng.integers(2012, 2026, n_people), rng.integers(1, 13, n_people),
                      rng.integers(1, 29, n_people), strict=True)],  # dates as strings
        "remote": rng.random(n_people) < 0.4,
    })

    hours = pd.date_range("2025-03-01", periods=24 * 14, freq="h")
    pages = ["/home", "/pricing", "/docs", "/blog"]
    weight = {"/home": 1.0, "/pricing": 0.4, "/docs": 0.7, "/blog": 0.3}
    traffic = pd.DataFrame([
        {"timestamp": hour, "page": page,
         "visits": int(rng.poisson(weight[page] * (60 + 50 * math.sin((hour.hour - 8) / 24 * 2 * math.pi)))),
         "bounce_rate": round(float(rng.uniform(0.2, 0.8)), 3)}
        for hour in hours for page in pages])

    n_customers = 200
    customers = pd.DataFrame({
        "customer_id": np.arange(1001, 1001 + n_customers),
        "segment": rng.choice(["Consumer", "SMB", "Enterprise"], n_customers, p=[0.6, 0.3, 0.1]),
        "country": rng.choice(["US", "UK", "DE", "FR", "JP"], n_customers),
        "churned_quarter": rng.choice(["Q1", "Q2", "Q3", "Q4", None], n_customers, p=[0.06, 0.09, 0.05, 0.07, 0.73]),
    })
    n_orders = 900
    price = rng.uniform(5, 200, n_orders).round(2)
    orders = pd.DataFrame({
        "order_id": np.arange(1, n_orders + 1),
        "customer_id": rng.choice(customers["customer_id"], n_orders),
        "order_date": [f"{int(m):02d}/{int(d):02d}/2025" for m, d in  # US-style date strings
                       zip(rng.integers(1, 13, n_orders), rng.integers(1, 29, n_orders), strict=True)],
        "price": price,
        "quantity": rng.integers(1, 6, n_orders),
        "returned": rng.random(n_orders) < (0.03 + price / 800),  # pricier items come back more
    })

    sensors = pd.DataFrame({
        "sensor": np.repeat(["A", "B", "C", "D"], 60),
        "reading": rng.normal(20, 5, 240).round(2),
        "humidity": rng.uniform(30, 90, 240).round(1),
    })
    sensors.loc[rng.random(240) < 0.15, "reading"] = np.nan
    sensors.loc[rng.random(240) < 0.10, "humidity"] = np.nan

    budget = pd.DataFrame({"region": regions, **{f"Q{q}": rng.integers(50, 150, 4) * 1000 for q in range(1, 5)}})  # wide
    months = [f"2025-{m:02d}" for m in range(1, 13)]
    metrics = pd.DataFrame([  # long
        {"month": month, "metric": metric, "value": round(float(rng.uniform(lo, hi)), 1)}
        for month in months for metric, lo, hi in (("signups", 300, 900), ("active_users", 4000, 9000),
                                                    ("support_tickets", 50, 400))])
    return {"sales": sales, "people": people, "traffic": traffic, "customers": customers, "orders": orders,
            "sensors": sensors, "budget": budget, "metrics": metrics}


# ---- judges --------------------------------------------------------------------------------------------


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?")


def _numbers(text: str) -> list[float]:
    found = []
    for token in _NUMBER.findall(text):
        try:
            found.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return found


def _scalar(output: Any) -> Any:
    """A one-element container's element (a Series or dict of one, a 1x1 frame, numpy scalars)."""
    if hasattr(output, "to_dict") and hasattr(output, "shape") and math.prod(output.shape) == 1:
        output = next(iter(output.to_numpy().ravel()))
    if isinstance(output, dict) and len(output) == 1:
        output = next(iter(output.values()))
    if isinstance(output, (list, tuple)) and len(output) == 1:
        output = output[0]
    if hasattr(output, "item") and getattr(output, "shape", None) == ():
        output = output.item()
    return output


def _as_mapping(output: Any) -> dict[str, Any] | None:
    """A Series, a two-column frame, a dict or a list of pairs as {key: value}; else None."""
    if hasattr(output, "columns") and hasattr(output, "iloc"):
        frame = output.reset_index() if output.shape[1] == 1 else output
        if frame.shape[1] != 2:
            return None
        output = dict(zip(frame.iloc[:, 0], frame.iloc[:, 1], strict=True))
    elif hasattr(output, "to_dict") and hasattr(output, "index"):
        output = output.to_dict()
    elif isinstance(output, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in output):
        output = dict(output)
    if not isinstance(output, dict):
        return None
    return {str(k).strip().lower(): v for k, v in output.items()}


def _close(value: Any, expected: float, tol: float) -> bool:
    try:
        return abs(float(value) - expected) <= tol
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Name:
    """A name among known choices: right if it is named and no other choice is."""

    value: str
    choices: tuple[str, ...]

    def judge(self, output: Any) -> bool:
        text = str(_scalar(output))
        named = {c for c in self.choices if re.search(rf"(?<!\w){re.escape(c)}(?!\w)", text, re.IGNORECASE)}
        return named == {self.value}

    def plain(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Number:
    """A number within an absolute tolerance: the value, or the one number a short text answer holds."""

    value: float
    tol: float = 0.01

    def judge(self, output: Any) -> bool:
        output = _scalar(output)
        if isinstance(output, bool):
            return False
        if isinstance(output, (int, float)) or hasattr(output, "__float__") and not isinstance(output, str):
            return _close(output, self.value, self.tol)
        if isinstance(output, str):
            return any(_close(n, self.value, self.tol) for n in _numbers(output))
        return False

    def plain(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Table:
    """A small table {key: number}: the same keys (case aside), every value within the tolerance."""

    value: dict[str, float]
    tol: float = 0.01

    def judge(self, output: Any) -> bool:
        mapping = _as_mapping(output)
        if mapping is None:
            return False
        expected = {k.lower(): v for k, v in self.value.items()}
        return mapping.keys() == expected.keys() and all(_close(mapping[k], v, self.tol) for k, v in expected.items())

    def plain(self) -> Any:
        return dict(self.value)


@dataclass(frozen=True)
class NameNumber:
    """A name (among choices) with its number, as text, a pair, a one-entry mapping ({name: number})
    or a two-entry record ({"customer_id": name, "amount": number})."""

    name: Name
    number: Number

    def judge(self, output: Any) -> bool:
        mapping = _as_mapping(output)
        if mapping is not None and len(mapping) == 1:
            (key, value), = mapping.items()
            return self.name.judge(key) and self.number.judge(value)
        if isinstance(output, dict) and len(output) == 2:
            output = tuple(output.values())
        if isinstance(output, (list, tuple)) and len(output) == 2:
            return self.name.judge(output[0]) and self.number.judge(output[1])
        if isinstance(output, str):
            rest = re.sub(re.escape(self.name.value), " ", output, flags=re.IGNORECASE)
            return self.name.judge(output) and self.number.judge(rest)
        return False

    def plain(self) -> Any:
        return (self.name.value, self.number.value)


Judge = Name | Number | Table | NameNumber


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    tables: tuple[str, ...]
    answer: Callable[[dict[str, Any]], Judge]  # the expected answer from the tables, as a judge


def _name(series: Any, pick: str = "max") -> Name:
    return Name(str(series.idxmax() if pick == "max" else series.idxmin()), tuple(str(k) for k in series.index))


def _name_number(series: Any, tol: float, pick: str = "max") -> NameNumber:
    name = _name(series, pick)
    return NameNumber(name, Number(float(series[name.value]), tol))


def _table(series: Any, digits: int = 2, tol: float = 0.01) -> Table:
    return Table({str(k): round(float(v), digits) for k, v in series.items()}, tol)


def _growth_by_region(t: dict[str, Any]) -> Any:
    s = t["sales"]
    first = s[s.date.dt.quarter == 1].groupby("region").revenue.sum()
    last = s[s.date.dt.quarter == 4].groupby("region").revenue.sum()
    return (last / first - 1) * 100


def _order_value(t: dict[str, Any]) -> Any:
    o = t["orders"]
    return o.assign(value=o.price * o.quantity).merge(t["customers"], on="customer_id")


def _order_month(t: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.to_datetime(t["orders"].order_date, format="%m/%d/%Y").dt.month


def _hired(t: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.to_datetime(t["people"].hired)


def _long(t: dict[str, Any]) -> Any:
    return t["metrics"].pivot(index="month", columns="metric", values="value")


def _budget_long(t: dict[str, Any]) -> Any:
    return t["budget"].melt(id_vars="region", var_name="quarter", value_name="amount")


QUESTIONS: list[Question] = [
    # sales by day
    Question("sales_total", "what was total revenue for the year?", ("sales",),
             lambda t: Number(round(float(t["sales"].revenue.sum()), 2), 1.0)),
    Question("sales_top_region", "which region brought in the most revenue?", ("sales",),
             lambda t: _name(t["sales"].groupby("region").revenue.sum())),
    Question("sales_growth", "which region grew fastest from Q1 to Q4 (revenue)?", ("sales",),
             lambda t: _name(_growth_by_region(t))),
    Question("sales_growth_pct", "by how many percent did South's revenue grow from Q1 to Q4?", ("sales",),
             lambda t: Number(round(float(_growth_by_region(t)["South"]), 1), 0.15)),
    Question("sales_best_month", "which month had the highest revenue? give the month number", ("sales",),
             lambda t: Number(int(t["sales"].groupby(t["sales"].date.dt.month).revenue.sum().idxmax()), 0)),
    Question("sales_weekday", "which day of the week sells the most units on average? (Monday, Tuesday, ...)",
             ("sales",), lambda t: _name(t["sales"].groupby(t["sales"].date.dt.day_name()).units.mean())),
    Question("sales_by_region", "units sold per region, as a table", ("sales",),
             lambda t: _table(t["sales"].groupby("region").units.sum(), 0, 0)),
    Question("sales_worst_day", "what was the single worst day for total units across all regions? answer the date "
             "as YYYY-MM-DD", ("sales",),
             lambda t: Name(str(t["sales"].groupby("date").units.sum().idxmin().date()),
                            tuple(str(d.date()) for d in t["sales"].date.unique()))),
    Question("sales_avg_price", "avg price in the West?", ("sales",),
             lambda t: Number(round(float(t["sales"][t["sales"].region == "West"].price.mean()), 3), 0.005)),
    Question("sales_days_over", "how many days did North sell more than 50 units?", ("sales",),
             lambda t: Number(int(((t["sales"].region == "North") & (t["sales"].units > 50)).sum()), 0)),
    # people and salaries
    Question("people_top_dept", "which department pays best on average?", ("people",),
             lambda t: _name(t["people"].groupby("department").salary.mean())),
    Question("people_median_eng", "median salary in engineering", ("people",),
             lambda t: Number(float(t["people"][t["people"].department == "Engineering"].salary.median()), 1.0)),
    Question("people_headcount", "headcount by department", ("people",),
             lambda t: _table(t["people"].department.value_counts(), 0, 0)),
    Question("people_corr_age", "is salary correlated with age? give the pearson correlation, 2 decimals",
             ("people",), lambda t: Number(round(float(t["people"].salary.corr(t["people"].age)), 2), 0.011)),
    Question("people_over_100k", "how many people earn over 100k?", ("people",),
             lambda t: Number(int((t["people"].salary > 100_000).sum()), 0)),
    Question("people_remote_share", "what percentage of staff are remote?", ("people",),
             lambda t: Number(round(float(t["people"].remote.mean() * 100), 1), 0.15)),
    Question("people_hired_2020", "how many people were hired in 2020?", ("people",),
             lambda t: Number(int((_hired(t).dt.year == 2020).sum()), 0)),
    Question("people_longest", "who has been here longest? (name)", ("people",),
             lambda t: Name(str(t["people"].name[_hired(t).idxmin()]), tuple(t["people"].name))),
    Question("people_lowest_dept", "lowest-paid department and its average salary", ("people",),
             lambda t: _name_number(t["people"].groupby("department").salary.mean(), 1.0, "min")),
    Question("people_payroll", "total payroll per department", ("people",),
             lambda t: _table(t["people"].groupby("department").salary.sum(), 0, 1.0)),
    # web traffic by hour
    Question("traffic_peak_hour", "what hour of the day gets the most visits? (0-23)", ("traffic",),
             lambda t: Number(int(t["traffic"].groupby(t["traffic"].timestamp.dt.hour).visits.sum().idxmax()), 0)),
    Question("traffic_top_page", "most visited page?", ("traffic",),
             lambda t: _name(t["traffic"].groupby("page").visits.sum())),
    Question("traffic_total_pricing", "how many visits did /pricing get in total?", ("traffic",),
             lambda t: Number(int(t["traffic"][t["traffic"].page == "/pricing"].visits.sum()), 0)),
    Question("traffic_busiest_day", "busiest day for traffic? YYYY-MM-DD", ("traffic",),
             lambda t: Name(str(t["traffic"].groupby(t["traffic"].timestamp.dt.date).visits.sum().idxmax()),
                            tuple(str(d) for d in t["traffic"].timestamp.dt.date.unique()))),
    Question("traffic_bounce", "which page has the worst average bounce rate, and what is it?", ("traffic",),
             lambda t: _name_number(t["traffic"].groupby("page").bounce_rate.mean(), 0.001)),
    Question("traffic_daily_avg", "average visits per day across the site", ("traffic",),
             lambda t: Number(round(float(t["traffic"].groupby(t["traffic"].timestamp.dt.date).visits.sum().mean()), 1),
                              0.5)),
    # two tables to join
    Question("join_churn_q2", "how many customers churned in Q2?", ("customers",),
             lambda t: Number(int((t["customers"].churned_quarter == "Q2").sum()), 0)),
    Question("join_top_segment", "which segment spends the most in total? (order value = price * quantity)",
             ("customers", "orders"), lambda t: _name(_order_value(t).groupby("segment").value.sum())),
    Question("join_country_revenue", "order value by country (price * quantity)", ("customers", "orders"),
             lambda t: _table(_order_value(t).groupby("country").value.sum(), 2, 1.0)),
    Question("join_churned_spend", "how much did customers who churned spend in total? (price * quantity)",
             ("customers", "orders"),
             lambda t: Number(round(float(_order_value(t).dropna(subset=["churned_quarter"]).value.sum()), 2), 1.0)),
    Question("join_no_orders", "how many customers never placed an order?", ("customers", "orders"),
             lambda t: Number(int((~t["customers"].customer_id.isin(t["orders"].customer_id)).sum()), 0)),
    Question("join_best_customer", "who is our biggest customer by order value (price * quantity)? customer_id "
             "and the amount", ("customers", "orders"),
             lambda t: _name_number(_order_value(t).groupby(_order_value(t).customer_id.astype(str)).value.sum(), 1.0)),
    Question("orders_price_returns", "is price correlated with returns? pearson correlation of price with "
             "returned (as 0/1), 2 decimals", ("orders",),
             lambda t: Number(round(float(t["orders"].price.corr(t["orders"].returned.astype(float))), 2), 0.011)),
    Question("orders_return_rate", "what's the return rate, in percent?", ("orders",),
             lambda t: Number(round(float(t["orders"].returned.mean() * 100), 1), 0.15)),
    # dates as strings
    Question("orders_best_month", "which month had the most orders? month number", ("orders",),
             lambda t: Number(int(_order_month(t).value_counts().idxmax()), 0)),
    Question("orders_march", "how many orders in march?", ("orders",),
             lambda t: Number(int((_order_month(t) == 3).sum()), 0)),
    # missing values
    Question("sensors_missing", "how many readings are missing?", ("sensors",),
             lambda t: Number(int(t["sensors"].reading.isna().sum()), 0)),
    Question("sensors_mean", "average reading per sensor, ignoring missing values", ("sensors",),
             lambda t: _table(t["sensors"].groupby("sensor").reading.mean(), 2, 0.011)),
    Question("sensors_most_gaps", "which sensor has the most missing humidity values?", ("sensors",),
             lambda t: _name(t["sensors"].humidity.isna().groupby(t["sensors"].sensor).sum())),
    Question("sensors_complete", "how many rows have both reading and humidity?", ("sensors",),
             lambda t: Number(int(t["sensors"].dropna().shape[0]), 0)),
    # wide format
    Question("budget_total", "total budget for the year per region", ("budget",),
             lambda t: _table(t["budget"].set_index("region")[["Q1", "Q2", "Q3", "Q4"]].sum(axis=1), 0, 0)),
    Question("budget_top_quarter", "which quarter has the biggest total budget? (Q1-Q4)", ("budget",),
             lambda t: _name(t["budget"][["Q1", "Q2", "Q3", "Q4"]].sum())),
    Question("budget_max_cell", "which region has the single largest quarterly budget, and how much?", ("budget",),
             lambda t: _name_number(_budget_long(t).groupby("region").amount.max(), 0.5)),
    # long format
    Question("metrics_signups", "total signups this year", ("metrics",),
             lambda t: Number(round(float(_long(t).signups.sum()), 1), 0.5)),
    Question("metrics_tickets_month", "which month had the most support tickets? (YYYY-MM)", ("metrics",),
             lambda t: _name(_long(t).support_tickets)),
    Question("metrics_ratio", "average tickets per 1000 active users over the year (mean of the monthly ratios)",
             ("metrics",),
             lambda t: Number(round(float((_long(t).support_tickets / _long(t).active_users * 1000).mean()), 2), 0.02)),
]


def select(questions: list[Question], only: Iterable[str] = (), limit: int | None = None,
           stride: int = 1) -> list[Question]:
    """The questions asked: those named (all if none), every `stride`-th of them, the first `limit`."""
    wanted = [q for q in questions if not only or q.id in set(only)][::stride]
    unknown = set(only) - {q.id for q in questions}
    if unknown:
        raise SystemExit(f"unknown question ids: {sorted(unknown)} (see --list)")
    return wanted[:limit] if limit else wanted


def task_text(question: Question, tables: dict[str, Any], where: str) -> str:
    """The question, and which tables exist (name, shape, columns) and where."""
    lines = [question.text, "", f"Tables ({where}):"]
    for name in question.tables:
        frame = tables[name]
        lines.append(f"- {name}: pandas DataFrame, {len(frame)} rows; columns: "
                     + ", ".join(f"{c} ({t})" for c, t in frame.dtypes.astype(str).items()))
    lines.append("Answer with the value itself (a number, a name, or a dict for a table).")
    return "\n".join(lines)


# ---- the agents ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    agent: str
    question: str
    expected: Any
    output: Any
    right: bool
    success: bool  # the agent said it finished (final answer given, not forced at the step limit)
    steps: int
    tokens: int
    seconds: float
    error: str | None = None
    transcript: list[str] = field(default_factory=list)  # each step: what the model wrote, what came back
    doubted: bool = False  # a success the run itself marked unverified (ours: run.doubted; smolagents has no such mark)


_SHOWN = 600  # characters of each step's reply and of its observation kept in the transcript


def _step_text(wrote: str, observed: str) -> str:
    return f"{wrote.strip()[:_SHOWN]}\n-> {observed.strip()[:_SHOWN]}"


@dataclass
class ModelSpec:
    name: str
    api_base: str | None = None
    api_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _our_model(spec: ModelSpec) -> Any:
    from agent_kernel.models import Model

    return Model(spec.name, api_base=spec.api_base, api_key=spec.api_key, **spec.options)


Result = tuple[Any, bool, int, int, str | None, list[str], bool]  # output, success, steps, tokens, error,
# transcript, doubted


def run_ours(kind: str, spec: ModelSpec, question: Question, tables: dict[str, Any]) -> Result:
    from agent_kernel.agents import CodeAgent, ToolCallingAgent
    from agent_kernel.base_tools import PythonInterpreterTool

    mine = {n: tables[n] for n in question.tables}
    if kind == "code":
        agent = CodeAgent(_our_model(spec), imports=["pandas", "numpy"], max_steps=MAX_STEPS)
        try:
            run = agent.run(task_text(question, tables, "variables already defined"), variables=mine)
        finally:
            agent.close()
    else:
        with PythonInterpreterTool(imports=["pandas", "numpy"]) as tool:  # the run pushes the tables into it
            run = ToolCallingAgent(_our_model(spec), tools=[tool], max_steps=MAX_STEPS).run(
                task_text(question, tables, "already defined in the python_interpreter tool"), variables=mine)
    tokens = run.usage.input_tokens + run.usage.output_tokens
    transcript = [_step_text(s.model_output, f"{s.observation}{' [error: ' + s.error + ']' if s.error else ''}")
                  for s in run.action_steps]
    return run.output, run.state == "success", len(run.action_steps), tokens, run.error, transcript, run.doubted


def run_smolagents(spec: ModelSpec, question: Question, tables: dict[str, Any]) -> Result:
    from smolagents import CodeAgent as SmolCodeAgent
    from smolagents import LiteLLMModel
    from smolagents.memory import ActionStep
    from smolagents.monitoring import LogLevel

    model = LiteLLMModel(spec.name, api_base=spec.api_base, api_key=spec.api_key, **spec.options)
    agent = SmolCodeAgent(tools=[], model=model, additional_authorized_imports=["pandas", "numpy"],
                          max_steps=MAX_STEPS, verbosity_level=LogLevel.OFF)
    result = agent.run(task_text(question, tables, "passed to you as variables"),
                       additional_args={n: tables[n] for n in question.tables}, return_full_result=True)
    usage = result.token_usage
    tokens = usage.input_tokens + usage.output_tokens if usage else 0
    actions = [s for s in agent.memory.steps if isinstance(s, ActionStep)]
    transcript = [_step_text(str(s.model_output or ""), f"{s.observations or ''}{' [error: ' + str(s.error) + ']' if s.error else ''}")
                  for s in actions]
    error = None if result.state == "success" else result.state
    return result.output, result.state == "success", len(actions), tokens, error, transcript, False


def run_one(agent: str, spec: ModelSpec, question: Question, tables: dict[str, Any]) -> Outcome:
    expected = question.answer(tables)
    started = time.monotonic()
    try:
        if agent == "smol":
            result = run_smolagents(spec, question, tables)
        else:
            result = run_ours(agent, spec, question, tables)
    except Exception as exc:  # a crash of one agent on one question is a wrong answer, not the end of the bench
        result = None, False, 0, 0, f"{type(exc).__name__}: {exc}", [], False
    output, success, steps, tokens, error, transcript, doubted = result
    return Outcome(agent, question.id, expected.plain(), _plain(output), expected.judge(output), success, steps,
                   tokens, time.monotonic() - started, error, transcript, success and doubted)


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return repr(value)[:300]


@dataclass
class Summary:
    agent: str
    questions: int
    right: int
    wrong_marked_success: int  # wrong, and a plain success: the run did not mark it unverified
    wrong_doubted: int  # wrong, and the run said so: a success marked unverified
    right_doubted: int  # right, yet marked unverified (a false alarm)
    mean_steps: float
    tokens_per_question: float
    seconds_per_question: float
    seconds_per_right: float | None


def summarize(agent: str, outcomes: list[Outcome]) -> Summary:
    mine = [o for o in outcomes if o.agent == agent]
    n = max(len(mine), 1)
    right = sum(o.right for o in mine)
    seconds = sum(o.seconds for o in mine)
    return Summary(agent, len(mine), right, sum(o.success and not o.doubted and not o.right for o in mine),
                   sum(o.doubted and not o.right for o in mine), sum(o.doubted and o.right for o in mine),
                   sum(o.steps for o in mine) / n, sum(o.tokens for o in mine) / n, seconds / n,
                   seconds / right if right else None)


def run_bench(agents: list[str], spec: ModelSpec, questions: list[Question],
              log: Callable[[str], None] = print, done: Iterable[Outcome] = (),
              saved: Callable[[list[Outcome]], None] = lambda outcomes: None) -> tuple[list[Outcome], list[Summary]]:
    """Every question on every agent; `done`: outcomes of an earlier, interrupted run of the same
    bench, kept and not run again; `saved` is called with all outcomes after each new one."""
    if spec.name.startswith("local/"):
        from agent_kernel.local_model import register

        register()  # litellm's `local/` provider, for smolagents' LiteLLMModel too
    tables = make_tables()
    outcomes = [o for o in done if o.agent in agents and o.question in {q.id for q in questions}]
    finished = {(o.agent, o.question) for o in outcomes}
    for question in questions:  # one question on every agent before the next: the machine's load hits all alike
        for agent in agents:
            if (agent, question.id) in finished:
                continue
            outcome = run_one(agent, spec, question, tables)
            log(f"[{agent:5}] {'ok ' if outcome.right else 'BAD'} {outcome.seconds:6.1f}s "
                f"{'doubted' if outcome.doubted else 'success' if outcome.success else 'failed ':7} {outcome.steps} steps  {question.id}: "
                f"{outcome.output!r} (expected {outcome.expected!r}){'  ' + outcome.error if outcome.error else ''}")
            outcomes.append(outcome)
            saved(outcomes)
    return outcomes, [summarize(agent, outcomes) for agent in agents]


def main(argv: list[str] | None = None) -> int:
    from agent_kernel.model_fetch import DEFAULT_LOCAL_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=f"local/{DEFAULT_LOCAL_MODEL}", help="any litellm model name")
    parser.add_argument("--api-base", help="the model's OpenAI-compatible endpoint, for all three agents")
    parser.add_argument("--agents", default=",".join(AGENTS), help=f"a comma list of {', '.join(AGENTS)}")
    parser.add_argument("--only", default="", help="a comma list of question ids (see --list)")
    parser.add_argument("--limit", type=int, help="the first N questions only")
    parser.add_argument("--stride", type=int, default=1,
                        help="every Nth question only: a sample over all the tables in 1/N of the time")
    parser.add_argument("--list", action="store_true", help="print the questions and their expected answers")
    parser.add_argument("--json", help="also write every outcome (after each one) and the summaries here")
    parser.add_argument("--resume", action="store_true",
                        help="keep the outcomes already in --json's file (same model) and run only the rest")
    args = parser.parse_args(argv)

    if args.stride < 1:
        parser.error("--stride takes a positive whole number")
    questions = select(QUESTIONS, [q for q in args.only.split(",") if q], args.limit, args.stride)
    if args.list:
        tables = make_tables()
        for q in questions:
            print(f"{q.id:22} {q.text}  -> {q.answer(tables).plain()!r}")
        return 0
    agents = [a for a in args.agents.split(",") if a]
    if set(agents) - set(AGENTS):
        parser.error(f"--agents takes {', '.join(AGENTS)}")
    spec = ModelSpec(args.model, args.api_base)
    done = _earlier(args.json, args.model) if args.resume else []

    def save(outcomes: list[Outcome], summaries: list[Summary] | None = None) -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": args.model, "api_base": args.api_base, "seed": SEED,
                           "outcomes": [asdict(o) for o in outcomes],
                           "summaries": [asdict(s) for s in summaries or []]}, f, indent=1, default=str)

    outcomes, summaries = run_bench(agents, spec, questions, lambda line: print(line, flush=True), done, save)
    print(f"\n{len(questions)} questions, model {args.model}, load average {os.getloadavg()[0]:.2f}")
    for s in summaries:
        per_right = f"{s.seconds_per_right:.1f}" if s.seconds_per_right is not None else "-"
        print(f"  {s.agent:5}: {s.right}/{s.questions} right, {s.wrong_marked_success} wrong marked success "
              f"(and {s.wrong_doubted} wrong, {s.right_doubted} right marked unverified), "
              f"{s.mean_steps:.1f} steps, {s.tokens_per_question:.0f} tokens, {s.seconds_per_question:.1f} s "
              f"per question, {per_right} s per right answer")
    save(outcomes, summaries)
    return 0


def _earlier(path: str | None, model: str) -> list[Outcome]:
    """The outcomes a run interrupted before it finished left in its --json file."""
    if not path or not os.path.exists(path):
        raise SystemExit("--resume needs --json FILE, the file of the run to go on with")
    with open(path) as f:
        earlier = json.load(f)
    if earlier.get("model") != model or earlier.get("seed") != SEED:
        raise SystemExit(f"{path} holds a run of {earlier.get('model')!r} (seed {earlier.get('seed')}), "
                         f"not of {model!r} (seed {SEED}): give another --json file to start afresh")
    return [Outcome(**o) for o in earlier["outcomes"]]


if __name__ == "__main__":
    sys.exit(main())
