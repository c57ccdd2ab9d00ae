"""What kind of answer a task asks for, read from its words, so that an answer of another kind goes
back to the model (a small model counts 11 rows, then answers with the first row's name), and one
still of another kind when the run ends says so in its record.

A NaN or an infinity answers nothing, nor does a name where the task asks for a date in a given
form ("YYYY-MM-DD"). Four kinds are read: an amount ("how many", "how much": a name or an id is
not one), one of a text column's values ("which segment": a row position is not one), both at once
("which region, and how much?": either alone is half the answer), and one value per group
("headcount by department", "payroll per region": one entry of the table is not the table). A
group is only a word naming a column of a DataFrame the task was given, and a task that asks for
one value ("which region ...", "the most ...") asks for one even if it says "by"."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..observation import FrameFacts
from ._evidence import NUMBER

Kind = Literal["nan", "one_value", "half_pair", "not_a_name", "not_listed", "no_amount", "many_values", "not_a_date"]

# What each mismatch is, as the step's error says it (after "final answer sent back: ").
WHY: dict[Kind, str] = {
    "nan": "it is or holds NaN or an infinity",
    "one_value": "the task asks for a value per group and it gives one",
    "half_pair": "the task asks which one and an amount and it gives one of them",
    "not_a_name": "the task asks which of a text column's values and it gives a number",
    "not_listed": "the task asks which of a text column's values and it gives none of them",
    "no_amount": "the task asks for an amount and it states none",
    "many_values": "the task asks for one value and it gives many",
    "not_a_date": "the task asks for a date in a given form and it gives none",
}


@dataclass(frozen=True)
class Mismatch:
    """An answer of another kind than the task asks for: which kind, and the words that say so (the
    fields of its SendBack message)."""

    kind: Kind
    words: dict[str, str] = field(default_factory=dict)


_AMOUNT = re.compile(r"\bhow (many|much)\b", re.IGNORECASE)
_NAMED = re.compile(r"[A-Z][A-Za-z]*(?: ?#|[ _-])$")  # "Person ", "Sensor #": the number after it is part of a name
_PER = re.compile(r"\b(?:per|by|for each|for every)\s+(\w+)", re.IGNORECASE)
_WORD = re.compile(r"\b(\w+)\b")
_WHICH = re.compile(r"\b(?:which|what)\s+(\w+)", re.IGNORECASE)
_WITH_AMOUNT = re.compile(r"\bhow (?:many|much)\b|\band (?:what is it|its \w+(?: \w+)?|the amount|how (?:many|much))\b",
                          re.IGNORECASE)
_DATE_FORM = re.compile(r"\bYYYY-MM(?:-DD)?\b", re.IGNORECASE)  # "answer the date as YYYY-MM-DD"
_DATE_OF_FORM = {"YYYY-MM-DD": r"\b\d{4}-\d{2}-\d{2}\b", "YYYY-MM": r"\b\d{4}-\d{2}\b"}
_ONE = re.compile(r"\b(which|who|whose|most|least|highest|lowest|best|worst|top|biggest|largest|smallest|"
                  r"fastest|slowest|longest|shortest)\b", re.IGNORECASE)


def mismatch(answer: Any, shown: str, task: str, frames: Iterable[FrameFacts]) -> Mismatch | None:
    """How `answer` (`shown` as the model is reminded of it) is not the kind `task` asks for, given its
    DataFrames; None when it is."""
    frames = list(frames)
    columns = {c for f in frames for c in f.columns}
    text_columns = {c for f in frames for c in f.text_columns}
    if is_nan_or_inf(answer):
        return Mismatch("nan", {"answer": shown})
    group = asked_per_group(task, columns)
    if group and is_one_value(answer):
        return Mismatch("one_value", {"group": group, "answer": shown, "held": ""})
    pair = asked_pair(task, text_columns)
    if pair and not (gives_pair(answer) and not _number_first(answer)):
        return Mismatch("half_pair", {"word": pair[0], "amount": pair[1], "answer": shown})
    word = asked_which(task, text_columns)
    if word and is_number(answer):
        return Mismatch("not_a_name", {"word": word, "answer": shown})
    values = _labels(frames, word) if word and isinstance(answer, str) else ()
    if word and values and not any(v.lower() in str(answer).lower() for v in values):
        listed = ", ".join(repr(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return Mismatch("not_listed", {"word": word, "answer": shown, "values": listed})
    how = asked_amount(task)
    if how and isinstance(answer, str) and not states_amount(answer):
        return Mismatch("no_amount", {"how": how, "answer": shown})
    many = _length(answer)
    if not pair and not group and (many or 0) > (2 if how else _MANY):  # a pair may be a name and its amount
        return Mismatch("many_values", {"how": f" ({how})" if how else "", "answer": shown})
    form = _DATE_FORM.search(task)
    if form and not group and not re.search(_DATE_OF_FORM[form[0].upper()], str(answer)):
        return Mismatch("not_a_date", {"form": form[0].upper(), "answer": shown})
    return None


def asked_amount(task: str) -> str | None:
    """"how many" or "how much" when the task asks one: its answer is a number."""
    found = _AMOUNT.search(task)
    return f"how {found[1].lower()}" if found else None


def states_amount(answer: str) -> bool:
    """Whether a text answer gives an amount: a number that is not part of a name or an id
    ("Person 015", "Sensor 3" and a zero-padded "007" name things; "11 people" counts them)."""
    for match in NUMBER.finditer(answer):
        padded = re.fullmatch(r"0\d+", match["mantissa"]) is not None
        if not padded and not _NAMED.search(answer[:match.start()]):
            return True
    return False


def asked_per_group(task: str, columns: Iterable[str]) -> str | None:
    """The group word ("department") when the task asks for a value per group of a column it was
    given ("by department", "per departments"), and not for one value ("which department ...")."""
    return None if _ONE.search(task) else _column_named(_PER, task, columns)


def asked_which(task: str, text_columns: Iterable[str]) -> str | None:
    """The word ("segment") when the task asks which of a text column's values ("which segment
    spends most?"): its answer is such a value, not a number (a row position, a total)."""
    return _column_named(_WHICH, task, text_columns)


def asked_pair(task: str, text_columns: Iterable[str]) -> tuple[str, str] | None:
    """(the word, what amount) when the task asks which of a text column's values and an amount with
    it ("which page has the worst bounce rate, and what is it?"): its answer is the two together."""
    amount = _WITH_AMOUNT.search(task)
    if amount is None:
        return None
    # "which page ..., and what is it?", or a superlative without "which": "lowest-paid department and its salary"
    word = asked_which(task, text_columns) or (
        _column_named(_WORD, task[:amount.start()], text_columns) if _ONE.search(task) else None)
    return (word, amount[0].lower().removeprefix("and ")) if word else None


def gives_pair(answer: Any) -> bool:
    """Whether an answer can hold a name and an amount: a pair, a mapping, or text stating both."""
    if isinstance(answer, str):
        return states_amount(answer) and re.search(r"[A-Za-z]{2}", answer) is not None
    return not is_one_value(answer)


def _length(answer: Any) -> int | None:
    """How many values a table, list or mapping answer holds; None for one value."""
    if is_one_value(answer):
        return None
    try:
        return len(answer)
    except TypeError:
        return None


_MANY = 25  # values: a task that asks for no table per group does not want this many


def _values(answer: Any) -> list[Any]:
    """The values of a pair, list, mapping or Series of at most _MANY of them; [] for anything else
    (a DataFrame, a longer table)."""
    if isinstance(answer, dict):
        values: Any = answer.values()
    elif isinstance(answer, (tuple, list)):
        values = answer
    elif callable(getattr(answer, "tolist", None)) and getattr(answer, "ndim", None) == 1:
        values = answer  # a Series or a 1-d array
    else:
        return []
    return list(values) if len(values) <= _MANY else []


def _number_first(answer: Any) -> bool:
    """A pair whose first item, the name, is a number (a row position: "which page" answered (156, 0.2))."""
    return isinstance(answer, (tuple, list)) and len(answer) == 2 and is_number(answer[0])


def _labels(frames: list[FrameFacts], word: str) -> tuple[str, ...]:
    """The values of the text column `word` names (or its plural), in every frame that has it."""
    found: dict[str, None] = {}
    for facts in frames:
        for column, values in facts.labels.items():
            if _names(word, column):
                found.update(dict.fromkeys(values))
    return tuple(v for v in found if v.strip())


def _names(word: str, column: str) -> bool:
    word, column = word.lower(), column.lower()
    return column in (word, word.removesuffix("s"), word.removesuffix("es"))


def _column_named(pattern: re.Pattern[str], task: str, columns: Iterable[str]) -> str | None:
    """The first word `pattern` captures in the task that names one of `columns` (or its plural)."""
    columns = [str(c) for c in columns]
    for found in pattern.finditer(task):
        if any(_names(found[1], c) for c in columns):
            return found[1]
    return None


def is_number(answer: Any) -> bool:
    return isinstance(answer, numbers.Number) and not isinstance(answer, bool)


def is_nan_or_inf(answer: Any) -> bool:
    """A NaN or infinite answer ("nan", "inf" as text too), or a pair, list, mapping or Series of at
    most 25 values holding such a number: the computation had nothing to work on, or divided by
    zero, whatever was asked ({'page': '/pricing', 'bounce_rate': inf})."""
    if isinstance(answer, str):
        return answer.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")
    return any(map(_infinite, [answer] if is_one_value(answer) else _values(answer)))


def _infinite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value)


def is_one_value(answer: Any) -> bool:
    """A single value (a name, a number), not a table, list or mapping."""
    return isinstance(answer, (str, bytes, numbers.Number))
