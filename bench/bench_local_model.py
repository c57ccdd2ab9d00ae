"""The embedded local model on this machine: speed, cache reuse, and how often it gets tasks right.

Speed (llama.cpp in this process, through the `local/` provider):
  load time, prompt tokens/s (cold prompt), generation tokens/s, time to first token and to the
  first executed action of a real CodeAgent run, and the second step's prompt time with the KV
  cache of step 1 kept versus thrown away.
Quality: small data-analysis tasks on a fixed sales table, each checked against the answer pandas
computes, run by `%%agent code` (CodeAgent, sandboxed Python) and by `%%agent tools`
(ToolCallingAgent with two table tools).

    nice -n 10 .venv/bin/python bench/bench_local_model.py [--model qwen2.5-coder-1.5b]
        [--tasks 12] [--agents code,tools] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


# ---- the table and the tasks -------------------------------------------------------------------------


REGIONS = ("North", "South", "East", "West")
PRODUCTS = {"Widget": 4.5, "Gadget": 12.0, "Gizmo": 27.5, "Doohickey": 8.25}


def bench_table(rows: int = 240, seed: int = 7) -> Any:
    """A fixed sales table (one row per order) with the derived columns revenue and month, so each
    task is one aggregation away."""
    import pandas as pd

    rng = random.Random(seed)
    records = []
    for i in range(rows):
        product = rng.choice(list(PRODUCTS))
        records.append({
            "date": f"2024-{1 + i % 12:02d}-{1 + rng.randrange(28):02d}",
            "region": rng.choice(REGIONS),
            "product": product,
            "units": rng.randint(1, 40),
            "unit_price": round(PRODUCTS[product] * rng.uniform(0.9, 1.1), 2),
        })
    sales = pd.DataFrame.from_records(records)
    sales["revenue"] = (sales["units"] * sales["unit_price"]).round(2)
    sales["month"] = sales["date"].str.slice(5, 7).astype(int)
    return sales


@dataclass
class Task:
    question: str
    answer: Callable[[Any], Any]  # the known answer, from the table


TASKS = [
    Task("How many orders (rows) are in the table?", lambda s: len(s)),
    Task("How many orders came from the East region?", lambda s: int((s.region == "East").sum())),
    Task("What is the total number of units sold over all orders?", lambda s: int(s.units.sum())),
    Task("What is the average unit_price of Gizmo orders, rounded to 2 decimals?",
         lambda s: round(float(s[s["product"] == "Gizmo"].unit_price.mean()), 2)),
    Task("Which product sold the most units in total?", lambda s: s.groupby("product").units.sum().idxmax()),
    Task("Which region had the highest total revenue?", lambda s: s.groupby("region").revenue.sum().idxmax()),
    Task("What is the total revenue of the West region, rounded to 2 decimals?",
         lambda s: round(float(s[s.region == "West"].revenue.sum()), 2)),
    Task("What is the largest number of units in a single order?", lambda s: int(s.units.max())),
    Task("How many orders have more than 30 units?", lambda s: int((s.units > 30).sum())),
    Task("In which month (a number 1-12) was the total revenue highest?",
         lambda s: int(s.groupby("month").revenue.sum().idxmax())),
    Task("What is the total revenue of Widget orders in the North region, rounded to 2 decimals?",
         lambda s: round(float(s[(s.region == "North") & (s["product"] == "Widget")].revenue.sum()), 2)),
    Task("Which product has the lowest average units per order?",
         lambda s: s.groupby("product").units.mean().idxmin()),
]


def is_correct(output: Any, expected: Any) -> bool:
    """A number matches to the cent (anywhere in a text answer); a name matches as a word."""
    if isinstance(expected, str):
        return re.search(rf"\b{re.escape(expected)}\b", str(output), re.IGNORECASE) is not None
    if isinstance(output, dict) and len(output) == 1:
        output = next(iter(output.values()))
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        numbers = [float(output)]
    else:
        numbers = [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*", str(output))]
    return any(abs(n - float(expected)) < 0.011 for n in numbers)


# ---- the tools for %%agent tools ---------------------------------------------------------------------


def table_tools(sales: Any) -> list[Any]:
    from agent_kernel.tools import tool

    @tool
    def describe_table() -> str:
        """The sales table: its columns, their types, the row count and the values of text columns."""
        lines = [f"{len(sales)} rows"]
        for name, dtype in sales.dtypes.items():
            values = f" values: {sorted(sales[name].unique())}" if dtype == object and name != "date" else ""
            lines.append(f"- {name} ({dtype}){values}")
        return "\n".join(lines)

    @tool
    def aggregate(column: str, func: str, group_by: str = "", filter_column: str = "",
                  filter_op: str = "==", filter_value: str = "") -> Any:
        """Aggregate a column of the sales table, optionally per group and over matching rows only.

        Args:
            column: the column to aggregate.
            func: one of sum, mean, count, max, min, nunique.
            group_by: a column to group by (empty: no grouping); the result is then {group: value}.
            filter_column: keep only rows where this column compares true (empty: all rows).
            filter_op: one of ==, !=, >, >=, <, <=.
            filter_value: the value to compare with (numbers are compared as numbers).
        """
        import operator

        ops = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
               "<": operator.lt, "<=": operator.le}
        for name in (column, group_by, filter_column):
            if name and name not in sales.columns:
                raise ValueError(f"no column {name!r}; columns are {list(sales.columns)}")
        if func not in ("sum", "mean", "count", "max", "min", "nunique"):
            raise ValueError("func must be one of sum, mean, count, max, min, nunique")
        rows = sales
        if filter_column:
            value: Any = filter_value
            if sales[filter_column].dtype != object:
                value = float(filter_value)
            rows = sales[ops[filter_op](sales[filter_column], value)]
        data = rows.groupby(group_by)[column] if group_by else rows[column]
        result = getattr(data, func)()
        if group_by:
            return {str(k): round(float(v), 4) for k, v in result.items()}
        return round(float(result), 4)

    return [describe_table, aggregate]


# ---- speed -----------------------------------------------------------------------------------------


def speed(name: str) -> dict[str, float]:
    from agent_kernel.agents import CodeAgent
    from agent_kernel.local_model import engine, register
    from agent_kernel.models import Model

    register()
    started = time.monotonic()
    llm = engine(name)
    results = {"load_seconds": time.monotonic() - started}
    model = Model(f"local/{name}")

    # Step 1 and step 2 of a real CodeAgent conversation (the agent's own system prompt).
    agent = CodeAgent(model, imports=["pandas", "numpy"])
    step1 = [{"role": "system", "content": agent.system_prompt()},
             {"role": "user", "content": "Task:\nWhich region had the highest total revenue?\n\n"
              "Variables already defined in the kernel:\n- sales: DataFrame 240 rows x 7 columns "
              "(date, region, product, units, unit_price, revenue, month)"}]
    llm.reset()
    reply = model.generate(step1, stop=["\n```\n"])
    cold = llm.last_timings
    results.update(prompt_tokens_cold=cold.prompt_tokens, prompt_tps=cold.prompt_tokens_per_second,
                   time_to_first_token=cold.prompt_seconds, generation_tps=cold.generation_tokens_per_second)
    step2 = [*step1, {"role": "assistant", "content": reply.content + "\n```"},
             {"role": "user", "content": "Observation:\nregion\nEast     10234.12\nNorth    9987.00\n"
              "South    11020.55\nWest     9876.40\nName: revenue, dtype: float64"}]
    model.generate(step2, stop=["\n```\n"])
    warm = llm.last_timings
    model.generate(step1, stop=["\n```\n"])
    llm.reset()
    model.generate(step2, stop=["\n```\n"])
    fresh = llm.last_timings
    results.update(step2_prompt_tokens=warm.prompt_tokens, step2_cached_tokens=warm.cached_tokens,
                   step2_prompt_seconds_cached=warm.prompt_seconds,
                   step2_prompt_seconds_uncached=fresh.prompt_seconds)

    # A longer generation for a steadier tokens/s.
    model.generate([{"role": "user", "content": "Write a Python function that parses ISO dates, with a docstring."}],
                   stop=None)
    results["generation_tps"] = llm.last_timings.generation_tokens_per_second
    results["generation_tokens"] = llm.last_timings.completion_tokens
    return results


# ---- quality -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    agent: str
    task: str
    expected: Any
    output: Any
    correct: bool
    steps: int
    seconds: float
    first_action_seconds: float
    state: str


def run_tasks(name: str, agents: list[str], count: int, log: Callable[[str], None],
              instructions: str | None = None) -> list[Outcome]:
    from agent_kernel.agents import CodeAgent, ToolCallingAgent
    from agent_kernel.local_model import register
    from agent_kernel.memory import ActionStep, RunCompleted, StepCompleted

    register()
    sales = bench_table()
    outcomes = []
    for kind in agents:
        for task in TASKS[:count]:
            expected = task.answer(sales)
            if kind == "code":
                agent: Any = CodeAgent(f"local/{name}", imports=["pandas", "numpy"], max_steps=6,
                                       instructions=instructions)
                variables: dict[str, Any] | None = {"sales": sales}
            else:
                agent = ToolCallingAgent(f"local/{name}", tools=table_tools(sales), max_steps=6,
                                         instructions=instructions)
                variables = None
            started = time.monotonic()
            first = 0.0
            run = None
            for event in agent.run(task.question, variables=variables, stream=True):
                if isinstance(event, StepCompleted) and isinstance(event.step, ActionStep) and not first:
                    first = time.monotonic() - started
                elif isinstance(event, RunCompleted):
                    run = event.run
            if kind == "code":
                agent.close()
            assert run is not None
            # Success: the agent called final_answer with the right value (a right value given only when
            # forced at max_steps does not count).
            correct = run.state == "success" and is_correct(run.output, expected)
            outcome = Outcome(kind, task.question, expected, _plain(run.output), correct,
                              len(run.action_steps), time.monotonic() - started, first, run.state)
            log(f"[{kind}] {'ok ' if outcome.correct else 'BAD'} {outcome.seconds:5.1f}s {run.state:9} "
                f"{outcome.steps} steps  {task.question}  -> {outcome.output!r} (expected {expected!r})")
            outcomes.append(outcome)
    return outcomes


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, type(None))) else repr(value)[:200]


def machine() -> dict[str, Any]:
    """What the numbers were measured on: the CPU, the cores this process may use, the load then."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    from agent_kernel.model_fetch import DEFAULT_LOCAL_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_LOCAL_MODEL, help="a catalog name or a .gguf path")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help=f"how many tasks (at most {len(TASKS)})")
    parser.add_argument("--agents", default="code,tools", help="code, tools or both")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurements")
    parser.add_argument("--instructions", help="instructions= for both agents (default: none, as %%%%agent runs them)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"model": args.model, "machine": machine()}
    print(f"machine: {report['machine']}")
    if not args.no_speed:
        report["speed"] = speed(args.model)
        for key, value in report["speed"].items():
            print(f"{key:32} {value:10.3f}" if isinstance(value, float) else f"{key:32} {value:10}")
    agents = [a for a in args.agents.split(",") if a]
    report["instructions"] = args.instructions
    outcomes = run_tasks(args.model, agents, args.tasks, lambda line: print(line, flush=True), args.instructions)
    report["tasks"] = [asdict(o) for o in outcomes]
    for kind in agents:
        mine = [o for o in outcomes if o.agent == kind]
        if not mine:
            continue
        right = sum(o.correct for o in mine)
        mean = sum(o.seconds for o in mine) / len(mine)
        first = sum(o.first_action_seconds for o in mine) / len(mine)
        report[f"{kind}_success"] = f"{right}/{len(mine)}"
        print(f"{kind:5} agent: {right}/{len(mine)} correct, mean {mean:.1f} s per task, "
              f"first action after {first:.1f} s on average")
    report["load_average_after"] = machine()["load_average"]
    print(f"load average after: {report['load_average_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
