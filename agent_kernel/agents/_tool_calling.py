"""ToolCallingAgent: the model acts through JSON tool calls, run in this process and checked first."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from ..memory import ActionStep, Run, ToolCall
from ..models import RAW_ARGUMENTS
from ..tools import Tool, ToolArgumentError, ToolError, VariableHolder
from . import _prompts
from ._context import Message, observation_text, truncate
from ._loop import NO_ANSWER, MultiStepAgent

FINAL = "final_answer"


class _FinalAnswer(Tool):
    """The tool that ends the run; its name is reserved, so it is built here, not with @tool."""

    _abstract = True

    def __init__(self) -> None:
        self.name = FINAL
        self.description = _prompts.FINAL_ANSWER_DESCRIPTION
        self.parameters = {"type": "object", "properties": {"answer": {"description": "the answer to the task"}},
                           "required": ["answer"]}
        self.output_type = "Any"
        self._signature_types = {"answer": "Any"}

    def forward(self, answer: Any) -> Any:
        return answer


_FINAL_TOOL = _FinalAnswer()


class ToolCallingAgent(MultiStepAgent):
    """Solves a task by calling tools: native function calling where the model has it, JSON in text otherwise.

    Arguments are validated against each tool's schema before the call; mistakes go back to the
    model. Calls from one reply run concurrently (sync tools in worker threads).
    """

    kind = "tools"
    default_description = ("An agent with tools: give it a task in plain language; "
                           "it calls its tools and returns the answer.")
    _max_steps_prompt: ClassVar[str] = _prompts.MAX_STEPS_TOOLS
    _send_back: ClassVar[_prompts.SendBack | None] = _prompts.TOOLS_SEND_BACK

    @property
    def native(self) -> bool:
        """Whether the model takes `tools=` (else the tools are described in the prompt)."""
        return bool(getattr(self.model, "supports_tools", False))

    def _all_tools(self) -> dict[str, Tool]:
        return {**self.tools, FINAL: _FINAL_TOOL}

    def system_prompt(self) -> str:
        if self.native:
            return _prompts.TOOLS_SYSTEM
        listed = "\n".join(
            f"- {t.name}: {t.description}\n  {json.dumps(t.parameters, separators=(',', ':'))}"
            for t in self._all_tools().values()
        )
        return _prompts.TOOLS_SYSTEM + _prompts.TOOLS_JSON_FORMAT.format(tools=listed)

    async def _request(self, messages: list[Message], on_delta: Callable[[str], None] | None, final: bool,
                       sampling: dict[str, float]) -> Any:
        if not self.native:
            return await self.model.agenerate(messages, on_delta=on_delta, **sampling)
        schemas = [t.openai_schema() for t in self._all_tools().values()]
        # Every reply acts (final_answer is a tool too), where the provider can be told so.
        required = {"tool_choice": "required"} if getattr(self.model, "supports_tool_choice", False) else {}
        return await self.model.agenerate(messages, tools=schemas, on_delta=on_delta, **required, **sampling)

    async def _act(self, step: ActionStep, reply: Any, final: bool) -> Any:
        if self.native:
            calls = list(reply.tool_calls or [])
        else:
            calls, problem = parse_json_calls(step.model_output)
            if problem:
                step.error = step.observation = problem
                return NO_ANSWER
        step.thought = step.model_output.strip()
        if not calls:
            step.error = "no tool call in the reply"
            step.observation = _prompts.TOOLS_FORMAT_REMINDER
            return NO_ANSWER
        _number(step, calls)
        if all(c.name == FINAL for c in calls) or await self._review(step):  # an answer alone needs no review
            # The other calls run first, wherever the answer sits in the batch; the answer is then accepted,
            # unless one of them failed (an answer written before seeing that failure is refused).
            others = [c for c in step.tool_calls if c.name != FINAL]
            await asyncio.gather(*(self._call(call, final) for call in others))
            failed_before = any(c.error is not None for c in others)
            await asyncio.gather(*(self._call(call, final, failed_before)
                                   for call in step.tool_calls if call.name == FINAL))
        calls = step.tool_calls
        failed = [c for c in calls if c.error is not None]
        if failed and not _reviewed(step, "skip"):
            step.error = "; ".join(f"{c.name}: {(c.error or '').splitlines()[0]}" for c in failed)
        step.observation = "\n".join(f"[{c.name}] {self._result_text(c)}" for c in calls)
        if _reviewed(step, "edit"):
            step.observation = f"{_prompts.REVIEW_EDITED_CALLS}\n{step.observation}"
        answers = [c for c in calls if c.name == FINAL and c.error is None]
        return answers[0].result if answers else NO_ANSWER

    async def _call(self, call: ToolCall, final: bool, others_failed: bool = False) -> None:
        """Validate and run one call; the outcome lands on the ToolCall (result or error).

        `others_failed`: another call of the same reply failed. A final answer given beside it was
        decided before that error was seen, so it is refused; beside calls that succeeded it stands
        (small models batch the answer with the calls it rests on; refusing that only repeats the batch).
        """
        known = self._all_tools()
        if not call.name:  # the model's call did not parse (often cut off at the reply's length limit)
            call.error = _prompts.CALL_NOT_JSON
            return
        if call.name not in known:
            call.error = f"there is no tool {call.name!r}; the tools are: {', '.join(known)}"
            return
        if final and call.name != FINAL:
            call.error = "not run: the steps are used up; call final_answer"
            return
        if call.name == FINAL and others_failed and not final:
            call.error = _prompts.FINAL_ANSWER_NOT_ALONE
            return
        tool = known[call.name]
        arguments = call.arguments
        if isinstance(arguments, dict) and set(arguments) == {RAW_ARGUMENTS}:  # not JSON: validate says so
            arguments = arguments[RAW_ARGUMENTS]
        try:
            call.arguments = tool.validate(arguments)
            call.result = await tool.acall(**call.arguments)
        except (ToolArgumentError, ToolError) as exc:  # written for the model: no exception name before it
            call.error = str(exc)
        except Exception as exc:  # the tool's failure is the model's to handle
            call.error = f"{type(exc).__name__}: {exc}"

    def _sent_back(self, answer: Any, run: Run, step: ActionStep) -> str | None:
        # With no tool but final_answer the model can compute nothing: there is nothing to send it back for.
        return super()._sent_back(answer, run, step) if self.tools else None

    def _apply_edit(self, step: ActionStep, text: str) -> None:
        calls, problem = parse_json_calls(text)
        if problem or not calls:
            raise ValueError(f"the edited tool calls are not valid: {problem or 'no call in them'}; write them as "
                             '[{"name": "<tool>", "arguments": {...}}]')
        _number(step, calls)

    def _decline(self, step: ActionStep, reason: str) -> None:
        for call in step.tool_calls:  # each call's result tells the model it was declined
            call.error = _prompts.REVIEW_DECLINED.format(reason=reason or _prompts.NO_REASON)

    def _reject_answer(self, step: ActionStep, feedback: str) -> None:
        super()._reject_answer(step, feedback)
        for call in step.tool_calls:
            if call.name == FINAL and call.error is None:
                call.error = feedback

    def _result_text(self, call: ToolCall) -> str:
        if call.error is not None:
            return truncate(f"Error: {call.error}", self.options.max_observation_chars)
        result = call.result
        if isinstance(result, str):
            text = result
        elif isinstance(result, (dict, list, int, float, bool)) or result is None:
            text = json.dumps(result, ensure_ascii=False, default=repr)
        else:
            text = repr(result)
        return truncate(text, self.options.max_observation_chars)

    def step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        if as_text or not self.native or not step.tool_calls:
            return [{"role": "assistant", "content": step.model_output or "(empty reply)"},
                    {"role": "user", "content": observation_text(step.observation)}]
        calls = [{"id": c.id, "type": "function",
                  "function": {"name": c.name, "arguments": json.dumps(c.arguments, default=repr)}}
                 for c in step.tool_calls]
        edited = [{"role": "user", "content": _prompts.REVIEW_EDITED_CALLS}] if _reviewed(step, "edit") else []
        return [{"role": "assistant", "content": step.model_output or None, "tool_calls": calls},
                *({"role": "tool", "tool_call_id": c.id, "content": self._result_text(c)} for c in step.tool_calls),
                *edited]

    def variables_place(self) -> str:
        return " and ".join(t.name for t in self._holders())

    def _holders(self) -> list[VariableHolder]:
        return [t for t in self.tools.values() if isinstance(t, VariableHolder)]

    async def _prepare(self, variables: dict[str, Any], reset: bool) -> dict[str, str]:
        if variables:
            for holder in self._holders():  # the python tool's code can use them by name
                await holder.apush(**variables)
        return await super()._prepare(variables, reset)

    def step_summary(self, step: ActionStep) -> str:
        if not step.tool_calls:
            return f"- step {step.index}: no tool call"
        calls = ", ".join(f"{c.name}({_compact(c.arguments)}) -> {'error' if c.error else 'ok'}"
                          for c in step.tool_calls)
        return f"- step {step.index}: {calls}"


def _reviewed(step: ActionStep, decision: str) -> bool:
    return step.review is not None and step.review.decision == decision


def _number(step: ActionStep, calls: list[ToolCall]) -> None:
    """Give each call an id (the tool messages answer them by id) and make them the step's calls."""
    for n, call in enumerate(calls):
        call.id = call.id or f"call_{step.index}_{n}_{uuid.uuid4().hex[:6]}"
    step.tool_calls = calls


def _compact(arguments: Any, limit: int = 100) -> str:
    text = json.dumps(arguments, ensure_ascii=False, default=repr) if not isinstance(arguments, str) else arguments
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_calls(text: str) -> tuple[list[ToolCall], str | None]:
    """Tool calls written as JSON in the reply text: one {"name", "arguments"} object, or a list of them.

    Returns (calls, problem): no JSON at all gives no calls and no problem (the format reminder
    follows); JSON that is not a call gives a problem message for the model.
    """
    decoder = json.JSONDecoder()
    found_json = False
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        found_json = True
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
            return [_json_call(i) for i in items], None
    if found_json:
        return [], ('Your reply had JSON but no tool call. Write {"name": "<tool>", "arguments": {...}}, '
                    "or a list of such objects.")
    return [], None


def _json_call(item: dict[str, Any]) -> ToolCall:
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # validation reports it to the model
    return ToolCall(name=item["name"], arguments=arguments)
