"""The words the agents send. Kept short: every token here is paid for on every step."""

from __future__ import annotations

from dataclasses import dataclass

CODE_SYSTEM = """\
You are an expert Python programmer solving a task step by step. Each step, you write Python code; \
it runs in a Jupyter kernel and you are shown its output, then you write the next step.

Reply with a short thought (one to three sentences), then exactly one code block, and stop:
Thought: <what you will do and why>
```python
<code>
```

Rules:
- Variables, imports and functions persist between steps. Reuse them; don't recompute.
- Print what you need to see; the value of a last bare expression is shown too. Long output is cut, \
so print summaries (shapes, heads, counts), not whole datasets.
- Figures and tables you display are reported to you as notes{vision}.
- Importable modules: {imports}.
- Call tools as Python functions, with keyword arguments; they return Python values.
- After an error, read it and fix the cause; don't repeat the same code.
{network}- Every reply must contain a ```python code block. Compute the answer and print it first; once \
you have seen it, your code block is just `final_answer(...)` with the variable that holds it, in the \
form the task asks for (a number, a name, a Series or DataFrame for a table, a figure); the run ends there. Never \
type a number into final_answer that no output showed.

Example:
Task: which product sold the most units in March? (`shop`: columns day, product, units)
Thought: Total the March units per product and print the totals, largest first.
```python
march = shop[shop["day"].dt.month == 3]
units = march.groupby("product")["units"].sum().sort_values(ascending=False)
print(units)
```
Observation: product
Gizmo     412
Widget    380
Thought: Gizmo sold the most (412 units). The task asks which product, so the answer is its name, \
the label of the largest total, `units.idxmax()`.
```python
final_answer(units.idxmax())
```

Functions already defined:
```python
{signatures}
```"""

NO_NETWORK = "- No network access and no shell unless a tool provides it.\n"

FINAL_ANSWER_SIGNATURE = '''\
def final_answer(answer: Any) -> None:
    """Give the task's answer and end the run."""
    ...'''

TOOLS_SYSTEM = """\
You are an expert assistant solving a task step by step with tools. Each step, call one or more \
tools; you are shown their results, then you decide the next step. Calls in one reply run at the \
same time, so only group calls that do not depend on each other.

Rules:
- Give every required argument, with the types the tool's schema asks for.
- After an error, read it and fix the call; don't repeat the same call.
- When you have the answer, call the `final_answer` tool with it; the run ends there. Call it alone, once you have seen the results it rests on: never guess a number."""

TOOLS_JSON_FORMAT = """

You call a tool by replying with a JSON object, and nothing after it:
{{"name": "<tool name>", "arguments": {{<argument name>: <value>, ...}}}}
Several independent calls: a JSON list of such objects.

Tools (name: description; arguments as a JSON schema):
{tools}"""

FINAL_ANSWER_DESCRIPTION = "Give the task's answer and end the run."

INSTRUCTIONS = "\n\nInstructions from the user (follow them):\n{instructions}"

TASK = "Task:\n{task}"
TASK_VARIABLES = "\n\nVariables already defined in {place}:\n{variables}"
TASK_VALUES = "\n\nValues given with the task (no tool holds them: use them as written):\n{variables}"
NEW_TASK = "New task (the earlier steps above are context):\n{task}"

CODE_FORMAT_REMINDER = """\
Your reply had no code block, so nothing ran. Reply with a thought and one code block:
```python
<code>
```
To finish, call final_answer(answer) in the code."""

TOOLS_FORMAT_REMINDER = "Your reply called no tool. Call a tool, or call `final_answer` with the answer to finish."

@dataclass(frozen=True)
class SendBack:
    """What the model is told when its final answer goes back, in its agent's terms."""

    uncomputed: str  # {numbers}, {pronoun}: numbers no output showed
    nan: str  # {answer}: a NaN or infinite answer
    no_amount: str  # {how}, {answer}: "how many" answered with a name
    not_a_name: str  # {word}, {answer}: "which segment" answered with a number
    not_listed: str  # {word}, {answer}, {values}: "which region" answered with text that names none of them
    one_value: str  # {group}, {answer}: a table per group answered with one entry
    half_pair: str  # {word}, {amount}, {answer}: "which region, and how much?" answered with one of them
    many_values: str  # {how} (" (how many)" or ""), {answer}: one value asked, a table given
    not_a_date: str  # {form}, {answer}: "answer the date as YYYY-MM-DD" answered otherwise
    typed: str = ""  # {answer}: the code typed the answer in (an agent whose answers are computed)


_NAN = ("the answer is {answer}: what computed it had nothing to work on (an empty selection, a column left "
        "constant by a filter, missing values) or divided by zero. ")

CODE_SEND_BACK = SendBack(
    nan=_NAN + "Print its inputs to see why, fix that, and compute the answer again.",
    uncomputed="the answer states {numbers}, which no output above shows: nothing computed {pronoun}. Compute "
               "the answer in code and print it, then give final_answer the computed value.",
    no_amount="the task asks {how}, but the answer {answer} gives no amount (a name or an id is not one). "
              "Compute the amount in code and print it, then give final_answer the number.",
    not_a_name="the task asks which {word}, but the answer {answer} is a number, not a {word} (its values are "
               "text). Give final_answer the {word} itself: the label of the largest entry is the Series' .idxmax().",
    not_listed="the task asks which {word}, but the answer {answer} names none of its values ({values}). Give "
               "final_answer the {word} itself: for the largest entry of a Series grouped by {word}, its .idxmax().",
    one_value="the task asks for a value per {group}, but the answer {answer} is one value. Give final_answer "
              "the whole table, one value per {group} (the Series a groupby made{held}).",
    half_pair="the task asks which {word} and {amount}, but the answer {answer} is not both the {word} (one of "
              "its text values, not a number or a row position) and the amount. Give final_answer both, as a pair: "
              "the {word} and the amount (for the largest entry of a Series, its .idxmax() and its .max()).",
    many_values="the task asks for one value{how}, but the answer {answer} holds many. Reduce them to "
                "the one number asked (e.g. .sum(), .mean(), len(...)), print it, then give final_answer that number.",
    not_a_date="the task asks for a date as {form}, but the answer {answer} is not one. Find the date the "
               "task asks about, then give final_answer it as {form} (a date's .strftime() writes it so).",
    typed="final_answer was given {answer} typed into the code, and a value read off an output is easily "
          "misread. Give final_answer the variable or expression of your code that computed the answer instead "
          "(for the label of a Series' largest entry, its .idxmax(); for its value, its .max()).",
)

TOOLS_SEND_BACK = SendBack(
    nan=_NAN + "Call a tool to print its inputs and see why, fix that, and compute the answer again.",
    uncomputed="the answer states {numbers}, which no tool result above shows: nothing computed {pronoun}. Call "
               "a tool that computes or looks it up, read its result, then call final_answer with the value it gave.",
    no_amount="the task asks {how}, but the answer {answer} gives no amount (a name or an id is not one). Call a "
              "tool that computes the amount, read its result, then call final_answer with the number it gave.",
    not_a_name="the task asks which {word}, but the answer {answer} is a number, not a {word} (its values are "
               "text). Call final_answer with the {word} itself, as a tool's result showed it.",
    not_listed="the task asks which {word}, but the answer {answer} names none of its values ({values}). Call "
               "final_answer with the {word} itself, as a tool's result showed it.",
    one_value="the task asks for a value per {group}, but the answer {answer} is one value. Call final_answer "
              "with the whole table, one value per {group}, as an object taken from a tool's result.",
    half_pair="the task asks which {word} and {amount}, but the answer {answer} is not both the {word} (one of "
              "its text values, not a number or a row position) and the amount. Call final_answer with both, as a "
              "list [the {word}, the amount], as a tool's result showed them.",
    not_a_date="the task asks for a date as {form}, but the answer {answer} is not one. Find the date the "
               "task asks about with a tool, then call final_answer with it as {form}.",
    many_values="the task asks for one value{how}, but the answer {answer} holds many. Call a tool that "
                "reduces them to the one number asked, read its result, then call final_answer with that number.",
)

CALL_NOT_JSON = ('the tool call is not valid JSON (too long, it may have been cut off): call one tool as '
                 '{"name": "<tool>", "arguments": {...}}, with less in it')

CHECK_FAILED = "Your final answer was not accepted: {reason}\nFix it and give the final answer again."

PLANNING = """\
Before the next step, write a short plan (no code, no tool calls):
1. Facts: what is known so far, from the task and the results above.
2. Still unknown: what must be found out.
3. Plan: the remaining steps, numbered, each one line.
The plan is for you; be brief."""

PLAN_HEADER = "Plan:\n{plan}"
PLAN_FOLLOW = "Now carry out the next step of the plan."

MAX_STEPS_CODE = """\
You have used all your steps. Do not explore further: give your best final answer now, in one \
code block calling final_answer(answer), using what you have already found."""

MAX_STEPS_TOOLS = """\
You have used all your steps. Do not call other tools: call `final_answer` now with your best \
answer, using what you have already found."""

EARLIER_STEPS = "Earlier steps, summarised (their outputs are no longer shown):\n{summary}"

OBSERVATION = "Observation:\n{observation}"

REPEATING = """\
[Note: the same error or the same action, {times} times in a row. You are repeating yourself: step \
back, try a different approach, or give your best final answer. One more repeat ends the run.]"""

ALTERNATING = """\
[Note: the last {times} steps went back and forth between the same two attempts. Neither works: step \
back, try a different approach, or give your best final answer. One more such step ends the run.]"""

REVIEW_EDITED_CODE = """\
[The user reviewed your code and edited it before it ran. This is what ran:
```python
{code}
```]"""

REVIEW_EDITED_CALLS = "[The user reviewed your tool calls and edited them before they ran; the calls above are what ran.]"

REVIEW_DECLINED = "The user reviewed this action and declined to run it; nothing ran. Reason: {reason}"

NO_REASON = "(no reason given)"

SAME_CODE_AGAIN = """\
Nothing ran: this is exactly the code of the previous step, whose output is above. Do not run it \
again: write the next step, which uses that output, or call final_answer if it answers the task."""

TOOL_REDEFINED = "`{name}` is a tool: call it, do not define or assign it."
TOOL_REDEFINED_END = "Nothing ran (the real tools are already in the kernel); rewrite the code without that."

FINAL_ANSWER_NOT_ALONE = (
    "not accepted: final_answer came in the same reply as a tool call that failed, before its error was seen. "
    "Read the results above, then call final_answer alone."
)
