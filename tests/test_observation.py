"""One description of a step: text, HTML, the exported notebook and the model's observation say the same."""

from __future__ import annotations

import html

from agent_kernel.display import render_html, render_text
from agent_kernel.export import run_to_notebook
from agent_kernel.memory import ActionStep, Review, Run
from agent_kernel.observation import NOTES, Code, Failure, Note, Output, Proposed, Thought, describe, render_observation
from agent_kernel.sandbox._records import Execution, ExecutionError


def _flooded_step() -> ActionStep:
    execution = Execution(code="print('x' * 10**9)", outputs=[{"output_type": "stream", "name": "stdout", "text": "xxx\n"}],
                          error=ExecutionError("TimeoutError", "30 s"), truncated=True, restarted=True)
    return ActionStep(index=1, thought="Print a lot.", code="print('x' * 10**9)", execution=execution,
                      error="TimeoutError: 30 s", review=Review("edit", original="print('y')"))


def test_every_view_words_the_sandbox_notes_alike() -> None:
    step = _flooded_step()
    run = Run(task="flood", agent="code", model="m", steps=[step], state="error")
    exported = "\n".join(c.source for c in run_to_notebook(run).cells)
    views = {"text": render_text(step), "html": html.unescape(render_html(step)), "export": exported,
             "model": render_observation(step.execution)}
    for note in NOTES.values():
        assert all(note in view for view in views.values()), (note, views)


def test_a_step_is_described_once_in_order() -> None:
    step = _flooded_step()
    parts = describe(step)
    kinds = [type(p) for p in parts]
    assert kinds[:4] == [Thought, Code, Proposed, Output]
    assert Note("truncated") in parts and Note("restarted") in parts
    assert not any(isinstance(p, Failure) for p in parts)  # the code's own error says it
    assert describe(ActionStep(index=2, error="no code in the reply")) == [Failure("no code in the reply")]
