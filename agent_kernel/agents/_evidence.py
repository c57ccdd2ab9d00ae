"""Where a final answer's numbers came from: each one looked up in what the run's steps showed.

An analyst can trust "9.6%" when a step printed 0.0962 (or 9.62, or 9.6 %); an answer whose figure
no step ever showed was not computed, whatever the model says. The run still ends as a success,
but its record says which numbers are `unverified` and which step showed each of the others.

What counts as evidence: a step's printed text and displayed values (their text form), the results
of the tools it called, and the value code passed to final_answer, except for numbers written as
literals in that code (`final_answer("10%")` computes nothing). Matching is tolerant: thousands
separators, percentages against fractions (9.6% ~ 0.096), signs ignored ("fell 3%" ~ -0.03), and
a shown value matches when it rounds to the answer's number at the answer's precision.

Numbers in the task are not evidence for themselves: a number the task gave ("top 5", "is growth
10%?") that no step showed is sourced to the task (step 0), so the answer block says "5 from the
task" rather than claiming it was computed, and it is not counted as unverified either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..memory import ActionStep, RunRecord

TASK = 0  # the source of a number the task itself gave
# A number, not a part of a date or a range ("2024-06" is a month, not 2024 and 6).
NUMBER = re.compile(
    r"(?<![\w.])(?<!\d-)(?P<mantissa>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exponent>[eE][-+]?\d+)?(?P<percent>\s?%)?(?!\w)(?!-\d)"
)
_MAX_TEXT = 2_000_000  # characters of one step's output searched (larger outputs: their start)


@dataclass(frozen=True)
class Number:
    """A number as written: its text, value (percent sign dropped) and decimal places."""

    text: str
    value: float
    places: int
    percent: bool

    def matches(self, shown: Number) -> bool:
        """Whether `shown` (from a step's output) rounds to this number at its precision."""
        half = 0.5 * 10.0 ** -self.places
        forms = [shown.value]
        if self.percent and not shown.percent:
            forms.append(shown.value * 100)  # 9.6% from a printed fraction 0.096
        if shown.percent and not self.percent:
            forms.append(shown.value / 100)  # 0.096 from a printed 9.6%
        # a few units in the last place more: the float arithmetic of parsing and scaling
        return any(abs(abs(form) - abs(self.value)) <= half + 4 * math.ulp(max(abs(form), abs(self.value)))
                   for form in forms)


@dataclass
class Evidence:
    sources: dict[str, int] = field(default_factory=dict)  # number as written -> step that showed it (0: task)
    unverified: list[str] = field(default_factory=list)  # numbers no step showed


def numbers(text: str) -> list[Number]:
    """The numbers in `text`: ints, decimals, exponents, percentages, with thousands separators."""
    found = []
    for match in NUMBER.finditer(text):
        mantissa, exponent = match["mantissa"].replace(",", ""), match["exponent"] or ""
        places = len(mantissa.partition(".")[2]) - (int(exponent[1:]) if exponent else 0)
        try:
            value = float(mantissa + exponent)
        except OverflowError:
            continue
        found.append(Number(match.group().strip(), value, places, bool(match["percent"])))
    return found


def weigh(answer: Any, run: RunRecord, pending: ActionStep | None = None) -> Evidence:
    """Each of the answer's numbers, sourced to the last step that showed it, else to the task.
    `pending`: the step that gave the answer, when it is not recorded in the run yet."""
    claimed = _answer_numbers(answer)
    if not claimed:
        return Evidence()
    looked_at = [*run.action_steps, *([pending] if pending is not None else [])]
    shown = [(step.index, numbers(text)) for step in looked_at for text in _shown(step, claimed)]
    given = numbers(run.task)
    evidence = Evidence()
    for number in claimed:
        steps = [index for index, seen in shown if any(number.matches(s) for s in seen)]
        if steps:
            evidence.sources[number.text] = steps[-1]
        elif any(number.matches(g) for g in given):
            evidence.sources[number.text] = TASK
        elif number.text not in evidence.unverified:
            evidence.unverified.append(number.text)
    return evidence


def _answer_numbers(answer: Any) -> list[Number]:
    """The numbers an answer states: in its text, or a number itself (other values: not read)."""
    if isinstance(answer, bool):
        return []
    if isinstance(answer, (int, float)):
        answer = str(answer)
    if not isinstance(answer, str):
        return []
    unique: dict[str, Number] = {}
    for number in numbers(answer):
        unique.setdefault(number.text, number)
    return list(unique.values())


def read_off(answer: Any, run: RunRecord) -> bool:
    """Whether a text or number of `answer` (a value, or a tuple, list or dict of them) stands among
    other lines in what a step of the run printed or displayed: a model that typed it in picked it
    out there (a one-line output, "Tuesday" or "South 16765.75", is not misread: a ranking is)."""
    values = [v for v in _flat(answer) if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    printed = [text for step in run.action_steps for text in _printed(step) if len(text.strip().splitlines()) > 1]
    texts = [v for v in values if isinstance(v, str) and v.strip()]
    if any(_stands_in(t, shown) for t in texts for shown in printed):
        return True
    written = [n for v in values if not isinstance(v, str) for n in numbers(str(v))]
    seen = [n for shown in printed for n in numbers(shown)]
    return any(w.matches(n) for w in written for n in seen)


def never_shown(name: str, run: RunRecord, pending: ActionStep | None = None) -> bool:
    """Whether a name (a short text: "East", "Person 002", "2025-01-03") stands, in any case, in
    nothing a step printed or displayed, nor in the task's words: typed in, it was not computed but
    guessed (a description of the data, listing a column's values, is where a small model finds
    one). `pending`: the step not recorded yet."""
    steps = [*run.action_steps, *([pending] if pending is not None else [])]
    texts = [run.task, *(shown for step in steps for shown in _printed(step))]
    return not any(_stands_in(name, text, re.IGNORECASE) for text in texts)


def _stands_in(text: str, shown: str, flags: int = 0) -> bool:
    """Whether `text` stands in `shown` as a whole (not inside a longer word or number)."""
    return re.search(rf"(?<![\w.]){re.escape(text)}(?!\w)", shown, flags) is not None


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def _printed(step: ActionStep) -> Iterator[str]:
    """The texts one step's code printed or displayed."""
    if step.execution is not None:
        for output in step.execution.outputs:
            if output["output_type"] == "stream":
                yield str(output.get("text", ""))[:_MAX_TEXT]
            elif output["output_type"] in ("display_data", "execute_result"):
                text = output.get("data", {}).get("text/plain", "")
                yield ("".join(text) if isinstance(text, list) else str(text))[:_MAX_TEXT]


def _shown(step: ActionStep, claimed: list[Number]) -> Iterator[str]:
    """The texts one step showed: its outputs, its tools' results, the value its code answered."""
    execution = step.execution
    if execution is not None:
        yield from _printed(step)
        if execution.has_final_answer and execution.error is None:
            written = numbers(step.code or "")
            literal = [n.text for n in claimed if any(n.matches(w) for w in written)]
            value = str(execution.final_answer)[:_MAX_TEXT]
            yield _without(value, literal)
    for call in step.tool_calls:
        if call.name != "final_answer" and call.error is None:  # a tool's answer is the model's claim
            yield str(call.result)[:_MAX_TEXT]


def _without(text: str, literal: list[str]) -> str:
    """`text` with the numbers the code wrote as literals taken out: those were not computed."""
    for number in literal:
        text = text.replace(number, " ")
    return text
