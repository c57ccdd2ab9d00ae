"""What the model is told about the variables a task hands it: described, not dumped.

A DataFrame gets a line per column saying what is in it (the range of numbers and dates, the values of
a text column with few, how many are missing, and text that holds dates), because a small model that
only sees `order_date: object` parses dates it never looked at, or filters on a region spelled as it
guessed. The values are the analyst's own (host side, before they are copied into the sandbox); the
sandbox's are never profiled here. Other values get the codec's one-line preview.
"""

from __future__ import annotations

import re
import sys
from typing import Any

MAX_COLUMNS = 30  # columns described one by one; the rest are listed by name
MAX_VALUES = 8  # distinct values of a text column listed when it has no more than this
_CELL = 24  # characters of one listed value
_DATE_TEXT = re.compile(r"^\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}|\d{4}-\d{2})([ T]\d{1,2}:\d{2}.*)?\s*$")


def describe_variable(value: Any, name: str = "df") -> str:
    """The preview of one variable for the task message (`name`: the variable's, which its hints use)."""
    from ..sandbox import describe

    pd = sys.modules.get("pandas")  # not imported: the value cannot be a DataFrame (and no import is paid)
    if pd is None or type(value) is not pd.DataFrame:
        return describe(value)
    try:
        return _frame(value, name, pd)
    except Exception:  # noqa: BLE001 - an odd column must not break the task; the one-liner still tells
        return describe(value)


def _frame(frame: Any, name: str, pd: Any) -> str:
    rows, cols = frame.shape
    lines = [f"DataFrame, {rows} rows x {cols} columns:"]
    for column in frame.columns[:MAX_COLUMNS]:
        lines.append(f"    {column}: {_column(frame[column], pd)}")
    if cols > MAX_COLUMNS:
        rest = ", ".join(str(c) for c in frame.columns[MAX_COLUMNS:MAX_COLUMNS + 50])
        lines.append(f"    ... {cols - MAX_COLUMNS} more columns: {rest}{', ...' if cols > MAX_COLUMNS + 50 else ''}")
    key = _row_key(frame, pd)
    if key is not None:
        lines.append(f"    (one row per {key}; the rows are numbered 0, 1, ...: .set_index('{key}') labels them by "
                     f"{key}, so that idxmax() and sum(axis=1) give a {key})")
    long = _long_layout(frame, pd)
    if long is not None:
        index, names, values = long
        lines.append(f"    (long format: one row per {' and '.join(index)} and {names}, the numbers in '{values}'. "
                     f"One column per {names}: wide = {name}.pivot(index={_listed(index)}, columns='{names}', "
                     f"values='{values}'), then wide[{_cell(frame[names].iloc[0])!r}])")
    return "\n".join(lines)


def _long_layout(frame: Any, pd: Any) -> tuple[list[str], str, str] | None:
    """(the columns that name a row, the column naming what each number is, the numbers' column) of a
    long table (month, metric, value), or None for another shape: the column of names has a few text
    values (not dates), each on several rows; the numbers are the one numeric column; and the two name
    columns together name each row once."""
    if not 2 < len(frame.columns) <= MAX_COLUMNS or len(frame) < 4:
        return None
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c].dtype)]
    if len(numeric) != 1 or not all(isinstance(c, str) for c in frame.columns):
        return None
    for names in frame.columns:
        column = frame[names]
        if names in numeric or not pd.api.types.is_string_dtype(column.dtype) or column.isna().any():
            continue
        counts = column.value_counts()
        if not 2 <= len(counts) <= MAX_VALUES or counts.min() < 2 or column.head(200).astype(str).str.match(_DATE_TEXT).all():
            continue
        index = [c for c in frame.columns if c not in (names, numeric[0])]
        if not frame.duplicated(subset=[*index, names]).any():
            return index, str(names), str(numeric[0])
    return None


def _listed(columns: list[str]) -> str:
    """One column as 'a', several as ['a', 'b'] (as pivot takes them)."""
    return repr(columns[0]) if len(columns) == 1 else repr(columns)


def _row_key(frame: Any, pd: Any) -> str | None:
    """The first text column naming each row once (a wide table's `region`; not dates stored as text),
    when the rows are only numbered."""
    if not isinstance(frame.index, pd.RangeIndex) or len(frame) < 2:
        return None
    for name in frame.columns[:MAX_COLUMNS]:
        column = frame[name]
        if isinstance(column, pd.Series) and pd.api.types.is_string_dtype(column.dtype) and \
                column.notna().all() and column.is_unique and not column.head(200).astype(str).str.match(_DATE_TEXT).all():
            return str(name)
    return None


def _column(column: Any, pd: Any) -> str:
    if isinstance(column, pd.DataFrame):  # a duplicated column name
        return "several columns share this name"
    dtype, present = column.dtype, column.dropna()
    missing = len(column) - len(present)
    parts = [str(dtype)]
    if len(present) == 0:
        parts.append("all missing")
    elif pd.api.types.is_bool_dtype(dtype):
        parts.append(f"{int(present.sum())} True")
    elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        parts.append(f"{_cell(present.min())} to {_cell(present.max())}")
    else:
        parts.append(_text(present))
    if missing:
        parts.append(f"{missing} missing")
    return ", ".join(parts)


def _text(present: Any) -> str:
    """A text column: its values when few, else how many; and whether it holds dates as text."""
    sample = present.head(200).astype(str)
    if sample.str.match(_DATE_TEXT).all():
        return f"dates stored as text, like {_cell(sample.iloc[0])!r} (pd.to_datetime parses them)"
    distinct = present.astype(str).value_counts()
    if len(distinct) <= MAX_VALUES:
        return f"{len(distinct)} values: " + ", ".join(repr(_cell(v)) for v in distinct.index)
    return f"{len(distinct)} distinct values, e.g. " + ", ".join(repr(_cell(v)) for v in distinct.index[:3])


def _cell(value: Any) -> str:
    """One value, short; a timestamp at midnight as its date."""
    normalize = getattr(value, "normalize", None)
    text = str(value.date()) if normalize is not None and value == normalize() else str(value)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"
