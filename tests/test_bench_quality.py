"""bench/bench_quality.py: its judges on the pandas answers, its tables, and its harness end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from scripted_server import ScriptedServer, text, tool_calls

pd = pytest.importorskip("pandas")

_PATH = Path(__file__).parent.parent / "bench" / "bench_quality.py"
_spec = importlib.util.spec_from_file_location("bench_quality", _PATH)
assert _spec and _spec.loader
bq: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_quality"] = bq  # dataclasses resolve their module by name
_spec.loader.exec_module(bq)


@pytest.fixture(scope="module")
def tables() -> dict[str, Any]:
    return bq.make_tables()


def test_at_least_40_questions_over_every_table(tables: dict[str, Any]) -> None:
    assert len(bq.QUESTIONS) >= 40
    assert len({q.id for q in bq.QUESTIONS}) == len(bq.QUESTIONS)
    assert {name for q in bq.QUESTIONS for name in q.tables} == set(tables)


def test_each_expected_answer_is_right_for_itself_and_wrong_for_another_questions(tables: dict[str, Any]) -> None:
    answers = [q.answer(tables) for q in bq.QUESTIONS]
    for i, (question, answer) in enumerate(zip(bq.QUESTIONS, answers, strict=True)):
        assert answer.judge(answer.plain()), question.id
        other = next(a for a in answers[i + 1:] + answers[:i] if repr(a.plain()) != repr(answer.plain()))
        assert not answer.judge(other.plain()), (question.id, other.plain())


def test_judges_take_the_shapes_agents_answer_in(tables: dict[str, Any]) -> None:
    by_id = {q.id: q for q in bq.QUESTIONS}
    headcount = by_id["people_headcount"].answer(tables)
    assert headcount.judge(tables["people"].department.value_counts())  # a Series
    assert not headcount.judge(tables["people"].department.value_counts().head(3))
    region = by_id["sales_top_region"].answer(tables)
    assert region.judge(f"The {region.value} region brought in the most.")
    assert not region.judge("South and North")  # naming two choices is no answer
    total = by_id["sales_total"].answer(tables)
    assert total.judge(f"Total revenue was {total.value:,.2f} dollars")
    assert total.judge(tables["sales"].revenue.sum())  # a numpy float
    lowest = by_id["people_lowest_dept"].answer(tables)
    assert lowest.judge({lowest.name.value: lowest.number.value})
    assert lowest.judge(f"{lowest.name.value}: {lowest.number.value:.2f}")
    assert not lowest.judge(f"{lowest.name.value}: {lowest.number.value + 10:.2f}")
    assert lowest.judge({"department": lowest.name.value, "avg_salary": lowest.number.value})  # a record
    assert not lowest.judge({"department": lowest.name.value, "avg_salary": lowest.number.value + 10})


def test_tables_are_the_same_for_the_seed_and_differ_for_another() -> None:
    first, again, other = bq.make_tables(), bq.make_tables(), bq.make_tables(bq.SEED + 1)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, again[name])
    assert not first["sales"].equals(other["sales"])


def test_harness_end_to_end_on_the_scripted_server(scripted_server: ScriptedServer, tables: dict[str, Any]) -> None:
    """Two questions for all three agents on one scripted model: one right, one wrong but finished."""
    by_id = {q.id: q for q in bq.QUESTIONS}
    questions = [by_id["people_headcount"], by_id["sales_total"]]
    scripted_server.script(lambda body: text(
        "Thought: count them.\n```python\nfinal_answer(people.department.value_counts().to_dict())\n```"),
        key=questions[0].text)
    scripted_server.script(lambda body: text("Thought: a guess.\n```python\nfinal_answer(1.5)\n```"),
                           key=questions[1].text)
    counts = {k: int(v) for k, v in tables["people"].department.value_counts().items()}

    def tools_headcount(body: dict[str, Any]) -> Any:  # the python tool first, then the answer it printed
        if any(m.get("role") == "tool" for m in body["messages"]):
            return tool_calls([("final_answer", {"answer": counts})])
        return tool_calls([("python_interpreter", {"code": "print(people.department.value_counts().to_dict())"})])

    in_tool = "\n\nTables (already defined in the python_interpreter tool)"
    scripted_server.script(tools_headcount, key=questions[0].text + in_tool)
    scripted_server.script(lambda body: tool_calls([("final_answer", {"answer": 1.5})]), key=questions[1].text + in_tool)
    spec = bq.ModelSpec("openai/scripted", scripted_server.url, "sk-scripted", {})
    lines: list[str] = []
    outcomes, summaries = bq.run_bench(["code", "tools", "smol"], spec, questions, lines.append)
    assert [(o.agent, o.question, o.right, o.success, o.steps) for o in outcomes] == [
        ("code", "people_headcount", True, True, 1), ("tools", "people_headcount", True, True, 2),
        ("smol", "people_headcount", True, True, 1), ("code", "sales_total", False, True, 2),
        ("tools", "sales_total", False, True, 2), ("smol", "sales_total", False, True, 1)], lines
    # both our agents sent the guess (1.5 was never computed) back once; given again, it stands, marked
    # unverified: a success that says it is doubtful, not a plain one (smolagents has no such mark)
    assert all(o.tokens > 0 for o in outcomes)
    assert [o.doubted for o in outcomes] == [False, False, False, True, True, False]
    assert [(s.wrong_marked_success, s.wrong_doubted, s.right_doubted) for s in summaries] == [(0, 1, 0), (0, 1, 0),
                                                                                             (1, 0, 0)]
    for summary in summaries:
        assert (summary.questions, summary.right) == (2, 1)
        assert summary.seconds_per_right == pytest.approx(summary.seconds_per_question * 2)
    assert [s.mean_steps for s in summaries] == [1.5, 2.0, 1.0]
    assert len(scripted_server.requests) == 9

    saved: list[list[Any]] = []  # an interrupted run goes on: what it had is kept, the rest runs
    again, _ = bq.run_bench(["code", "tools"], spec, questions, lines.append, done=outcomes[:4], saved=saved.append)
    assert again[:3] == [outcomes[0], outcomes[1], outcomes[3]] and [o.agent for o in again[3:]] == ["tools"]
    assert len(scripted_server.requests) == 11 and saved == [again]


def test_select_names_samples_and_limits_questions() -> None:
    ids = [q.id for q in bq.QUESTIONS]
    assert [q.id for q in bq.select(bq.QUESTIONS, stride=2)] == ids[::2]
    assert [q.id for q in bq.select(bq.QUESTIONS, [ids[3], ids[1], ids[2]], stride=2)] == [ids[1], ids[3]]
    assert [q.id for q in bq.select(bq.QUESTIONS, limit=3, stride=3)] == ids[:9:3]
    with pytest.raises(SystemExit, match="unknown question ids"):
        bq.select(bq.QUESTIONS, ["no_such_question"])
