"""One description of a step: its parts in order, typed, with the wording every view shares.

A step is walked here once; the plain text and HTML of display.py, the notebook cells of export.py
and the model's observation (`render_observation`) each render these parts, so a note such as a cut
output reads the same to the analyst, in the exported notebook and to the model. Records only: no
rendering, no sanitising (the views do that: everything here is untrusted model or sandbox text).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
import struct
import sys
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .records import ActionStep, FinalAnswerStep, RunRecord, ToolCall, Usage

if TYPE_CHECKING:  # the sandbox package imports jupyter_client: keep records cheap to import
    from .sandbox import Execution

TRACEBACK_LINES = 30  # the model sees the last lines of a traceback


@dataclass(frozen=True)
class Thought:
    """The model's prose before its action."""

    text: str


@dataclass(frozen=True)
class Code:
    """The action's code as it ran."""

    source: str


@dataclass(frozen=True)
class Proposed:
    """What the model had proposed, when a reviewer edited the action before it ran."""

    source: str
    language: Literal["python", "json"]


@dataclass(frozen=True)
class Call:
    """A tool call: the action of a ToolCallingAgent, or a tool the CodeAgent's code called."""

    call: ToolCall


@dataclass(frozen=True)
class Output:
    """One output of the sandbox, as nbformat shapes it (stream, display_data, execute_result, error)."""

    output: dict[str, Any]


@dataclass(frozen=True)
class ExecutionFailure:
    """The error that ended the code, as a short traceback (the views also have it as an error Output)."""

    name: str
    value: str
    traceback: str


NoteKind = Literal["truncated", "restarted"]
NOTES: dict[NoteKind, str] = {
    "truncated": "the output was too long; the middle was cut",
    "restarted": "the sandbox restarted: every variable and import is gone",
}


@dataclass(frozen=True)
class Note:
    """Something the sandbox did to the run that its outputs do not show."""

    kind: NoteKind

    @property
    def text(self) -> str:
        return NOTES[self.kind]


@dataclass(frozen=True)
class Failure:
    """Why the step failed, when its code's error does not already say (no code, a bad tool call)."""

    text: str


@dataclass(frozen=True)
class FinalValue:
    """The value the code passed to final_answer."""

    value: Any


Part = Thought | Code | Proposed | Call | Output | ExecutionFailure | Note | Failure | FinalValue


def describe(step: ActionStep) -> list[Part]:
    """The parts of an action step in the order every view shows them."""
    parts: list[Part] = [Thought(step.thought.strip())] if step.thought.strip() else []
    if step.code:
        parts.append(Code(step.code))
    if step.review is not None and step.review.original is not None:
        parts.append(Proposed(step.review.original, "python" if step.code is not None else "json"))
    # A ToolCallingAgent's final_answer call is the answer, which the run shows once, as its answer.
    parts.extend(Call(call) for call in step.tool_calls if call.name != "final_answer")
    if step.execution is not None:
        parts.extend(execution_parts(step.execution))
    if step.error and not (step.execution and step.execution.error):
        parts.append(Failure(step.error))
    return parts


_OPEN_FENCE = re.compile(r"```[ \t]*[\w+-]*[^\n]*\n")
_CLOSE_FENCE = re.compile(r"\n[ \t]*```")


def describe_streamed(text: str) -> list[Part]:
    """A reply still being written, as the step it is becoming: the thought so far, then the code
    so far once its fence has opened (the view shows them as it will show the finished step)."""
    opened = _OPEN_FENCE.search(text)
    before = text if opened is None else text[: opened.start()]
    thought = re.sub(r"^\s*Thought:\s*", "", before.strip()).rstrip("`").strip()  # `` of a fence to come
    parts: list[Part] = [Thought(thought)] if thought else []
    if opened is not None:
        code = text[opened.end():]
        closed = _CLOSE_FENCE.search(code)
        code = re.sub(r"\n[ \t]*`{1,2}\Z", "", code) if closed is None else code[: closed.start()]  # a fence closing
        if code.strip():
            parts.append(Code(code))
    return parts


def execution_parts(execution: Execution) -> list[Part]:
    """What running code produced: outputs in order, the sandbox's notes, the error, the answer."""
    parts: list[Part] = [Output(o) for o in execution.outputs]
    if execution.truncated:
        parts.append(Note("truncated"))
    if execution.error is not None:
        error = execution.error
        parts.append(ExecutionFailure(error.name, error.value, str(error)))
    if execution.restarted:
        parts.append(Note("restarted"))
    if execution.has_final_answer:
        parts.append(FinalValue(execution.final_answer))
    return parts


# ---------------------------------------------------------------------------------------------
# Wording shared by the views


def format_call(call: ToolCall) -> str:
    """A tool call as the Python a reader expects: `search(query='x', limit=3)`."""
    args = call.arguments if isinstance(call.arguments, dict) else {"arguments": call.arguments}
    if all(isinstance(k, str) and k.isidentifier() for k in args):
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items())
    else:
        inner = f"**{args!r}"
    name = call.name if call.name.isidentifier() else f"<tool {call.name!r}>"
    return f"{name}({inner})"


def format_footer(usage: Usage, steps: int, duration: float, state: str = "") -> str:
    """Steps, time, tokens, cost and state. While running, `steps` counts the step in progress,
    and tokens are left out until a reply has counted some (a reply's usage comes at its end)."""
    parts = [f"{steps} step{'s' if steps != 1 else ''}", f"{duration:.1f} s"]
    if state != "running" or usage.total_tokens:
        parts += [f"{usage.total_tokens:,} tokens ({usage.input_tokens:,} in / {usage.output_tokens:,} out)",
                  f"${usage.cost:.4f}"]
    return " · ".join(parts + ([state] if state else []))


def answer_sources(step: FinalAnswerStep) -> str:
    """Where the answer's numbers came from: "9.6% from step 2; 5 from the task" ("" if none)."""
    return "; ".join(f"{number} from {f'step {index}' if index else 'the task'}"
                     for number, index in step.sources.items())


def spoken_list(items: list[str]) -> str:
    """"a", "a and b", "a, b and c": items as a sentence names them."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def unverified_note(step: FinalAnswerStep) -> str:
    """"unverified: 10% was never computed; the task asks for one value and it gives many": what the
    checks doubt about the answer ("" when nothing)."""
    numbers = step.unverified
    doubts = [f"{spoken_list(numbers)} {'was' if len(numbers) == 1 else 'were'} never computed"] if numbers else []
    doubts += [step.mismatch] if step.mismatch else []
    return f"unverified: {'; '.join(doubts)}" if doubts else ""


def state_label(run: RunRecord) -> str:
    """The run's state as its footer says it: "success, unverified" for an answer the checks doubt."""
    return f"{run.state}, unverified" if run.state == "success" and run.doubted else run.state


def review_label(step: ActionStep) -> str:
    """How the reviewer's decision reads after the step header ("" when nobody reviewed it)."""
    review = step.review
    if review is None:
        return ""
    reason = f": {review.reason}" if review.reason else ""
    return {"run": " · reviewed", "edit": " · edited by the reviewer before it ran",
            "skip": f" · declined by the reviewer{reason}", "stop": f" · stopped by the reviewer{reason}"}[review.decision]


# ---------------------------------------------------------------------------------------------
# The model's view


@dataclass(frozen=True)
class FrameFacts:
    """What the hints and answer checks know of a DataFrame a task gave: its columns, those holding
    text, and the values of each text column that takes few (in a long table, the names of what a
    wide one would have as columns: KeyError 'signups' is a value of `metric` there)."""

    columns: tuple[str, ...]
    text_columns: frozenset[str] = frozenset()
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # text column -> its values
    number_columns: tuple[str, ...] = ()  # those holding numbers (a long table's 'value')


Frames = Mapping[str, FrameFacts]  # the DataFrames the task gave, by variable name
MAX_LABELS = 50  # a text column with more distinct values than this is not a set of names
_LABELS_READ = 10_000  # rows read for a text column's values


def frame_facts(variables: Mapping[str, Any]) -> dict[str, FrameFacts]:
    """The FrameFacts of each DataFrame among a task's variables."""
    pd = sys.modules.get("pandas")  # not imported: no value can be a DataFrame
    if pd is None:
        return {}
    facts = {}
    for name, frame in variables.items():
        if not isinstance(frame, pd.DataFrame):
            continue
        text = {str(c): column for c, column in frame.iloc[:_LABELS_READ, :1000].items()
                if isinstance(column, pd.Series) and (pd.api.types.is_string_dtype(column.dtype)
                                                      or pd.api.types.is_object_dtype(column.dtype))}
        labels = {}
        for column_name, column in text.items():
            values = column.dropna().unique()
            if len(values) <= MAX_LABELS:
                labels[column_name] = tuple(v[:80] for v in values if isinstance(v, str))
        numeric = tuple(str(c) for c, dtype in frame.dtypes.iloc[:1000].items() if pd.api.types.is_numeric_dtype(dtype))
        facts[name] = FrameFacts(tuple(str(c) for c in frame.columns[:1000]), frozenset(text), labels, numeric)
    return facts


def render_observation(execution: Execution, frames: Frames | None = None) -> str:
    """What the model learns from an execution, in output order: text, notes for rich displays, error.
    `frames`: the DataFrames the task gave, so that an error's hint can name the one to use."""
    lines = [line for part in execution_parts(execution) if (line := _observed(part, frames or {}))]
    return "\n".join(lines) or "(the code ran and printed nothing)"


def _observed(part: Part, frames: Frames) -> str:
    if isinstance(part, Output):
        kind = part.output["output_type"]
        if kind == "stream":
            return part.output["text"].rstrip("\n")
        if kind in ("display_data", "execute_result"):
            note = _display_note(part.output.get("data", {}))
            return f"Out: {note}" if kind == "execute_result" else note
        return ""  # an error output: the ExecutionFailure part says it, shorter
    if isinstance(part, Note):
        return f"[{part.text}{'; redo what you need' if part.kind == 'restarted' else ''}]"
    if isinstance(part, ExecutionFailure):
        lines = _user_frames(part.traceback.strip().splitlines())
        if len(lines) > TRACEBACK_LINES:
            lines = [f"[... {len(lines) - TRACEBACK_LINES} traceback lines cut ...]", *lines[-TRACEBACK_LINES:]]
        hint = pandas_hint(part, frames)
        return "Error:\n" + "\n".join(lines) + (f"\nHint: {hint}" if hint else "")
    if isinstance(part, FinalValue):
        return f"final_answer: {_short_repr(part.value)}"
    return ""


def _user_frames(lines: list[str]) -> list[str]:
    """A traceback without the frames of installed libraries (pandas' internals run to dozens of
    lines the model cannot act on): the frames of the code that ran, and the error itself."""
    kept: list[str] = []
    cut, at = 0, 0
    in_library = False
    for line in lines:
        if line.startswith("File "):  # IPython starts a library frame so; "Cell In[..]" is the code's
            cut, at, in_library = cut + 1, at if cut else len(kept), True
        elif not (in_library and (not line.strip() or line[:1].isspace() or line.startswith(("-", ">")))):
            in_library = False  # past the library frame's context lines
            kept.append(line)
    if cut:
        kept.insert(at, f"[... {cut} frame{'s' * (cut > 1)} in library code cut ...]")
    return kept


_DATE_ERRORS = ("Can only use .dt accessor with datetimelike values", "Invalid comparison between dtype=object",
                "unsupported operand type(s) for -: 'str' and 'str'", "cannot convert")


_ALIASES = {"pd": "pandas", "np": "numpy", "plt": "matplotlib.pyplot", "sns": "seaborn"}


def pandas_hint(failure: ExecutionFailure, frames: Frames | None = None) -> str:
    """One line for pandas' common slips (small models make them often), from the error and the
    DataFrames the task gave."""
    if failure.name == "ImportError" and "is not allowed in this sandbox" in failure.value:
        example = (": df['a'].corr(df['b']) is Pearson's correlation, no scipy needed"
                   if re.search(r"\bpandas\b", failure.value) else "")
        return f"your code cannot allow a module: do it with the modules listed as allowed{example}"
    join = _join_hint(failure, frames or {})
    if join:
        return join
    alias = re.fullmatch(r"name '(\w+)' is not defined", failure.value)
    if failure.name == "NameError" and alias and alias[1] in _ALIASES:
        return f"import {_ALIASES[alias[1]]} as {alias[1]} first"
    line = _failing_line(failure.traceback)
    if failure.name in ("ValueError", "TypeError", "AttributeError") and _GROUP_ARITHMETIC.search(line):
        return _group_arithmetic_hint(line)
    scalar = re.fullmatch(r"'(numpy\.\w+|int|float)' object has no attribute '(\w+)'", failure.value)
    if failure.name == "AttributeError" and scalar:
        return (f"that value is a single number ({scalar[1]}), not a Series or DataFrame: an earlier step "
                f"reduced it (e.g. .sum() or .max()); keep the Series, e.g. groupby(...)[col].sum(), to call .{scalar[2]}")
    text = re.fullmatch(r"'str' object has no attribute '(\w+)'", failure.value)
    if failure.name == "AttributeError" and text:
        return (f"that value is already text (a str), which has no .{text[1]}: print it to see it, and if it "
                f"is what you need, use it as it is")
    if failure.name == "FileNotFoundError" and re.search(r"\.(csv|xlsx?|json|parquet|tsv)'?$", failure.value):
        return ("no such file here: data you were given is already loaded as a variable (see the task); "
                "use it by name instead of reading a file")
    if failure.name == "TypeError" and re.search(r"fillna\(\) got an unexpected keyword argument 'method'", failure.value):
        return "fillna(method=...) is gone from pandas: .ffill() fills gaps from the row before, .bfill() from the row after"
    if "pandas" not in failure.traceback:
        return ""
    if failure.name == "KeyError" and "get_grouper" in failure.traceback:
        return _grouper_hint(line, frames or {})
    located = _LOC_BY_VALUE.search(line) if failure.name == "KeyError" else None
    if located:
        frame, column, op = located["frame"], located["column"], located["op"]
        return (f"{frame}['{column}'].{op}() is a value, not a row label: {frame}['{column}'].idx{op}() is the "
                f"label of its row, e.g. {frame}.loc[{frame}['{column}'].idx{op}(), ...]")
    several = _SEVERAL_COLUMNS.search(line) if failure.name == "KeyError" and failure.value.startswith("(") else None
    if several:
        head, columns = several["head"], several["columns"]
        return (f"{head}[{columns}] asks for one column named ({columns}): select several with a list inside the "
                f"brackets, {head}[[{columns}]]")
    if failure.name == "KeyError":
        return _missing_column_hint(failure.value, frames or {})
    if failure.name in ("ValueError", "TypeError", "AttributeError") and any(e in failure.value for e in _DATE_ERRORS):
        column = _DATE_COLUMN.search(line)
        if column:
            frame, name = column["frame"], column["name"]
            return (f"{frame}['{name}'] holds dates as text: convert it first, "
                    f"{frame}['{name}'] = pd.to_datetime({frame}['{name}']), then use .dt")
        return "the dates may be stored as strings: convert the column with pd.to_datetime(...) first"
    aggregated = _AGGREGATED.search(line)
    if failure.name == "TypeError" and any(e in failure.value for e in _TEXT_AGGREGATE_ERRORS):
        if aggregated:
            return (f"the table has text columns: pick the column first, "
                    f"{aggregated['head']}['{aggregated['column']}'].{aggregated['op']}()")
        return ("the table has text columns: pick the numeric columns first (df[['a', 'b']]), or pass "
                "numeric_only=True, e.g. df.sum(axis=1, numeric_only=True)")
    if "subset columns with a tuple" in failure.value:
        columns = _TUPLE_OF_COLUMNS.search(line)
        listed = f"[[{columns['columns']}]]" if columns else "[['a', 'b']]"
        return f"select several columns with a list inside the brackets: df.groupby(key){listed}"
    return ""


_GROUP_ARITHMETIC = re.compile(r"\.groupby\([^)]*\)(\[[^\]]*\]|\.\w+)?\s*[-+*/]\s*\w")
_LOC_BY_VALUE = re.compile(r"(?P<frame>\w+)\.loc\[\s*(?P=frame)\[['\"](?P<column>\w+)['\"]\]\.(?P<op>max|min)\(\)")
_AGGREGATED = re.compile(  # df.groupby(key).mean()["units"]: every column aggregated, then one picked
    r"(?P<head>\w+\.groupby\(.+\))\.(?P<op>mean|median|sum|std|var)\(\)\[['\"](?P<column>\w+)['\"]\]")
_TEXT_AGGREGATE_ERRORS = ("does not support operation", "Could not convert", "agg function failed",
                          "can only concatenate str", "unsupported operand type(s) for +")
_SEVERAL_COLUMNS = re.compile(  # budget.set_index('region')['Q1', 'Q2']: a tuple, one column's name
    r"(?P<head>\w+(?:\.\w+(?:\([^()]*\))?)*)\[(?P<columns>(?P<q>['\"])\w+(?P=q)(?:\s*,\s*['\"]\w+['\"])+)\]")
_TUPLE_OF_COLUMNS = re.compile(r"\)\[(?P<columns>['\"]\w+['\"](?:\s*,\s*['\"]\w+['\"])+)\]")
_GROUPED_COLUMNS = re.compile(  # df.groupby(key)["price"] * df["quantity"]: the columns are known
    r"(?P<frame>\w+)\.groupby\((?P<key>[^)]*)\)\[(?P<q>['\"])(?P<a>\w+)(?P=q)\]\s*(?P<op>[-+*/])\s*"
    r"(?P=frame)\[['\"](?P<b>\w+)['\"]\]")
_DATE_COLUMN = re.compile(r"(?P<frame>\w+)\[['\"](?P<name>\w+)['\"]\]\.dt\b")


def _group_arithmetic_hint(line: str) -> str:
    """Arithmetic on a groupby (small models write df.groupby(k)["a"] * df["b"]): the columns first."""
    found = _GROUPED_COLUMNS.search(line)
    if found is None:
        return ("arithmetic on a groupby does not combine columns: make the product a column first, "
                "df['value'] = df['price'] * df['quantity'], then df.groupby(key)['value'].sum()")
    frame, key = found["frame"], found["key"]
    return (f"arithmetic on a groupby does not combine columns: make it a column first, "
            f"{frame}['value'] = {frame}['{found['a']}'] {found['op']} {frame}['{found['b']}'], "
            f"then {frame}.groupby({key})['value'].sum()")


def _grouper_hint(line: str, frames: Frames) -> str:
    """groupby by a column name on a Series (`revenue.groupby('region')`, the product of two columns):
    group it by the column of the DataFrame that has it."""
    found = _SERIES_GROUPBY.search(line)
    holder = next((name for name, facts in frames.items() if found and found["key"] in facts.columns), None)
    if found is None or holder is None or found["series"] in frames:
        return ("groupby found no such column: on a Series (e.g. a product of two columns), group by values, "
                "s.groupby(df['region']), or first make it a column: df['revenue'] = ...; "
                "df.groupby('region')['revenue'].sum()")
    series, key = found["series"], found["key"]
    return (f"{series} is a Series, not the DataFrame: it has no column '{key}'. Group it by {holder}'s "
            f"column: {series}.groupby({holder}['{key}']){found['rest'] or '.sum()'}")


_SERIES_GROUPBY = re.compile(r"(?P<series>\w+)\.groupby\(\s*(?P<q>['\"])(?P<key>\w+)(?P=q)\s*\)(?P<rest>\.\w+\(\))?")


def _failing_line(traceback: str) -> str:
    """The source line IPython marks with an arrow in the innermost frame of the code that ran."""
    arrows = [found[1] for line in _user_frames(traceback.strip().splitlines())
              if (found := re.match(r"-+> *\d+ (.*)$", line))]
    return arrows[-1] if arrows else ""


def _missing_column_hint(value: str, frames: Frames) -> str:
    """A KeyError in pandas: a value of a long table's text column (its rows, or a pivot), or the
    given DataFrames' columns and the one the name was likely meant to be."""
    key = _missing_key(value)
    columns = [c for facts in frames.values() for c in facts.columns]
    if key is None or not columns:
        return "that column or label is not there; print(df.columns) to see the DataFrame's columns"
    for name, facts in frames.items():
        holder = next((column for column, labels in facts.labels.items() if key in labels), None)
        if holder is not None:
            rows = f"{name}[{name}['{holder}'] == '{key}']"
            if len(facts.number_columns) == 1:  # the numbers' column: a long table's 'value'
                rows = f"{name}.loc[{name}['{holder}'] == '{key}', '{facts.number_columns[0]}']"
            return (f"'{key}' is not a column of {name} but a value of its column '{holder}' (a long table): take "
                    f"its rows, {rows}, or make one column per {holder} with {name}.pivot(columns='{holder}', ...)")
    listed = "; ".join(f"{name}: {', '.join(facts.columns[:20])}{', ...' if len(facts.columns) > 20 else ''}"
                       for name, facts in list(frames.items())[:5])
    close = difflib.get_close_matches(key, columns, n=1, cutoff=0.5)
    meant = f"; did you mean '{close[0]}'?" if close else ""
    return f"no column '{key}' in the DataFrames given (columns: {listed}){meant}"


def _missing_key(value: str) -> str | None:
    """The name a KeyError's message quotes ("'region'"), or None for another key."""
    quoted = re.fullmatch(r"'([^']+)'", value)
    return quoted[1] if quoted else None


def _join_hint(failure: ExecutionFailure, frames: Frames) -> str:
    """A KeyError for a column that only another given DataFrame has: the two need a merge."""
    key = _missing_key(failure.value) if failure.name == "KeyError" else None
    if key is None:
        return ""
    holders = [name for name, facts in frames.items() if key in facts.columns]
    others = [name for name, facts in frames.items() if key not in facts.columns]
    for holder in holders:
        for other in others:
            shared = [c for c in frames[other].columns if c in frames[holder].columns]
            if shared:
                return (f"'{key}' is a column of {holder}, not of {other}: merge them first, e.g. "
                        f"merged = {other}.merge({holder}, on='{shared[0]}'), then use merged")
    return ""


def _display_note(data: dict[str, Any]) -> str:
    text = data.get("text/plain", "")
    if isinstance(text, list):
        text = "".join(text)
    images = [m for m in data if m.startswith("image/")]
    if images:
        mime = images[0]
        size = png_size(data[mime]) if mime == "image/png" else None
        described = f" {text.strip()}" if text.startswith("Figure (") else ""  # see _kernel_side._describe_figures
        return f"[displayed {mime}{f' {size[0]}x{size[1]}' if size else ''}{described}]"
    if text:
        return text.rstrip("\n")
    return f"[displayed {', '.join(data) or 'nothing'}]"


def png_size(encoded: Any) -> tuple[int, int] | None:
    """Width and height from the PNG header, without decoding the image."""
    try:
        head = base64.b64decode(str(encoded)[:44])
    except (binascii.Error, ValueError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


def _short_repr(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
