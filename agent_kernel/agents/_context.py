"""What the model sees: the system prompt, then the agent's memory as chat messages.

The loop decides what happens; this module decides how it reads back to the model. An agent kind
(code or tools) says how one of its action steps reads (`StepReader`); everything around that
(the task, plans, the summary of old steps, figures as images, merged turns) is the same for both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..memory import ActionStep, PlanningStep, Step, TaskStep
from . import _prompts

Message = dict[str, Any]
_SUMMARY_LINES = 20  # steps beyond the window and these lines are not shown at all
FOLD_BLOCK = 4  # action steps leave the recent window this many at a time


class StepReader(Protocol):
    """How an agent kind's action steps read back to the model."""

    def step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        """The step as chat turns (`as_text`: no tool-role messages)."""
        ...

    def step_summary(self, step: ActionStep) -> str:
        """One compact line for a step that fell out of the recent window."""
        ...

    def variables_place(self) -> str:
        """Where the task's variables are defined ("the kernel"); "" where nothing holds them."""
        ...


def messages(system: str, memory: Iterable[Step], reader: StepReader, keep_steps: int,
             as_text: bool = False) -> list[Message]:
    """System prompt, then memory. Action steps older than `keep_steps` shrink to one line each
    in a single summary message (the oldest drop out), so a long run's prompt stops growing.

    Steps fold in blocks of FOLD_BLOCK, so the prompt's prefix stays the same for several
    steps in a row and a model server's prompt cache (llama.cpp's KV cache, providers' prompt
    caching) keeps serving it."""
    memory = list(memory)
    actions = [s for s in memory if isinstance(s, ActionStep)]
    folded = max(0, len(actions) - keep_steps) // FOLD_BLOCK * FOLD_BLOCK
    recent = {id(s) for s in actions[folded:]}
    summarised = {id(s) for s in actions[:folded][-_SUMMARY_LINES:]}
    plans = [s for s in memory if isinstance(s, PlanningStep)]
    out: list[Message] = [{"role": "system", "content": system}]
    summary: list[str] = []
    seen_task = False
    for step in [*memory, None]:  # None flushes a trailing summary
        if isinstance(step, ActionStep) and id(step) not in recent:
            if id(step) in summarised:
                summary.append(reader.step_summary(step))
            continue
        if summary:
            out.append({"role": "user", "content": _prompts.EARLIER_STEPS.format(summary="\n".join(summary))})
            summary = []
        if isinstance(step, TaskStep):
            out.append({"role": "user", "content": task_text(step, seen_task, reader.variables_place())})
            seen_task = True
        elif isinstance(step, PlanningStep) and step is plans[-1]:  # older plans are superseded
            out.append({"role": "assistant", "content": _prompts.PLAN_HEADER.format(plan=step.plan)})
            out.append({"role": "user", "content": _prompts.PLAN_FOLLOW})
        elif isinstance(step, ActionStep):
            out.extend(reader.step_messages(step, as_text))
            if step.images and not as_text and step is actions[-1]:  # figures go with the next observation
                out[-1] = {**out[-1], "content": _with_images(out[-1]["content"], step.images)}
    return _merge_consecutive(out)


def system_prompt(base: str, instructions: str | None) -> str:
    """The agent kind's system prompt, with the user's instructions after it."""
    if instructions:
        return base + _prompts.INSTRUCTIONS.format(instructions=instructions.strip())
    return base


def task_text(step: TaskStep, follow_up: bool, place: str) -> str:
    text = (_prompts.NEW_TASK if follow_up else _prompts.TASK).format(task=step.task)
    if step.variables:
        listed = "\n".join(f"- {name}: {preview}" for name, preview in step.variables.items())
        heading = _prompts.TASK_VARIABLES if place else _prompts.TASK_VALUES
        text += heading.format(place=place, variables=listed)
    return text


def observation_text(text: str) -> str:
    return _prompts.OBSERVATION.format(observation=text)


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail of long text and say how much was cut (errors hide in the tail)."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail:]}"


def join(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def _merge_consecutive(messages: list[Message]) -> list[Message]:
    """Some providers refuse two user (or assistant) turns in a row; plain turns are joined."""
    merged: list[Message] = []
    for message in messages:
        previous = merged[-1] if merged else None
        if (previous is not None and previous["role"] == message["role"] and set(previous) == set(message)
                == {"role", "content"} and message["role"] in ("user", "assistant")):
            merged[-1] = {"role": message["role"], "content": _concat(previous["content"], message["content"])}
        else:
            merged.append(message)
    return merged


def _concat(first: Any, second: Any) -> Any:
    """Two turns' content as one: text joined, or content parts (text and images) in order."""
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    return _parts(first) + _parts(second)


def _parts(content: Any) -> list[dict[str, Any]]:
    return content if isinstance(content, list) else [{"type": "text", "text": str(content)}]


def _with_images(content: Any, images: list[str]) -> list[dict[str, Any]]:
    """OpenAI-style content parts, which litellm translates for each provider."""
    return _parts(content) + [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
                              for png in images]
