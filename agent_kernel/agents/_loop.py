"""The loop both agents share: ask the model, act, observe, until a final answer or max_steps.

Everything runs as one asyncio task so `interrupt()` can cancel whatever is in progress (a model
call, a sandbox action, tool calls) and still hand back the run with the steps done so far.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import inspect
import json
import queue
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal, overload

from .. import _aio, _gc
from .. import review as _review
from ..memory import (
    ActionStep,
    Event,
    FinalAnswerStep,
    PlanningStep,
    Review,
    Run,
    RunCompleted,
    RunStarted,
    Step,
    StepCompleted,
    StepStarted,
    TaskStep,
    TextDelta,
    Usage,
)
from ..tools import Tool, as_tool
from . import _prompts

Message = dict[str, Any]
FinalAnswerCheck = Callable[[Any, Run], Any]  # (answer, run) -> bool, or raise with the reason
StepCallback = Callable[[Step, Run], Any]
Sink = Callable[[Event], None]


class _NoAnswer:
    """Marks an action that did not end the run (None is a valid final answer)."""

    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Any = _NoAnswer()
_DONE = object()
_SUMMARY_LINES = 20  # steps beyond the window and these lines are not shown at all
_FOLD_BLOCK = 4  # action steps leave the recent window this many at a time
REPEAT_NOTE_AT = 3  # the same error or action this many times in a row: the model is told
STUCK_AT = 4  # ... and this many times ends the run as "stuck"
_unpriced_said: set[str] = set()  # models whose missing price was already pointed out


class UnpricedModelWarning(UserWarning):
    """litellm has no price for the model: its cost counts as $0, so only token budgets apply."""


class _RunEnded(Exception):
    """A guard ended the run on purpose (budget, repetition, the reviewer): the steps so far are kept."""

    def __init__(self, state: Literal["budget_exceeded", "stuck", "stopped"], reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class _WorkClock:
    """The run's working time, for max_time. Time spent waiting for the reviewer does not count.
    Inside `bounding()` (an action running) the clock cancels the task once the time is used up,
    so a long action is stopped (the sandbox interrupts its code) instead of overrunning the budget."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.started = time.perf_counter()
        self.waited = 0.0
        self.expired = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.waited

    @contextlib.contextmanager
    def bounding(self) -> Iterator[None]:
        self._task = asyncio.current_task()
        self._arm()
        try:
            yield
        finally:
            self._disarm()
            self._task = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._disarm()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - began
            self._arm()

    def _arm(self) -> None:
        if self.limit is not None and self._task is not None:
            left = max(0.0, self.limit - self.elapsed())
            self._timer = asyncio.get_running_loop().call_later(left, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self.expired = True
        if self._task is not None:
            self._task.cancel()


class _CallerJob:
    """A call that asks the user (an approver, ask_user) handed to the thread that called the sync
    API (it is waiting on the event queue anyway), so `input()` and widgets run where the user is,
    not on the background loop."""

    def __init__(self, ask: Callable[[Any], Any], arg: Any) -> None:
        self.ask, self.arg = ask, arg
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run_here(self, agent: MultiStepAgent) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.ask(self.arg))
        except KeyboardInterrupt:  # Ctrl-C at the prompt interrupts the run
            agent.interrupt()
            self.future.set_exception(asyncio.CancelledError())
        except Exception as exc:
            self.future.set_exception(exc)


class MultiStepAgent:
    """The shared loop. Subclasses say how a reply becomes an action and how a step reads back."""

    kind: ClassVar[Literal["code", "tools"]]
    default_description: ClassVar[str]  # what a manager agent reads when this agent is its tool
    _max_steps_prompt: ClassVar[str]  # the last request when the steps are used up

    def __init__(
        self,
        model: Any,
        tools: Iterable[Any] = (),
        *,
        max_steps: int = 10,
        planning_interval: int | None = None,
        instructions: str | None = None,
        final_answer_checks: Iterable[FinalAnswerCheck] = (),
        step_callbacks: Iterable[StepCallback] = (),
        max_observation_chars: int = 10_000,
        keep_steps: int = 8,
        name: str | None = None,
        description: str | None = None,
        add_base_tools: bool = False,
        review: bool = False,
        approve: _review.Approver | None = None,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        max_time: float | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        if planning_interval is not None and planning_interval < 1:
            raise ValueError(f"planning_interval must be a positive number of steps or None, got {planning_interval}")
        if keep_steps < 1:
            raise ValueError(f"keep_steps must be at least 1, got {keep_steps}")
        for label, limit in (("max_cost", max_cost), ("max_tokens", max_tokens), ("max_time", max_time)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{label} must be a positive number or None (no limit), got {limit!r}")
        if approve is not None and not callable(approve):
            raise TypeError(f"approve must be callable(step) -> Decision, got {approve!r}")
        self.model = _as_model(model)
        self.tools: dict[str, Tool] = {}
        for t in tools:
            converted = as_tool(t)
            if converted.name in self.tools:
                raise ValueError(f"two tools are named {converted.name!r}; give one another name (@tool(name=...))")
            self.tools[converted.name] = converted
        self._owned_tools: list[Any] = []  # tools this agent made (add_base_tools) and so must close
        if add_base_tools:
            from ..base_tools import base_tools

            for base in base_tools(self.kind):
                if base.name not in self.tools:  # the user's own tool of that name wins
                    self.tools[base.name] = base
                    self._owned_tools.append(base)
        self.max_steps = max_steps
        self.planning_interval = planning_interval
        self.instructions = instructions
        self.final_answer_checks = list(final_answer_checks)
        self.step_callbacks = list(step_callbacks)
        self.max_observation_chars = max_observation_chars
        self.keep_steps = keep_steps
        # review=True asks the analyst (a widget prompt in a notebook, else input()); approve= is a script's reviewer
        self.approve: _review.Approver | None = approve or (_review.interactive if review else None)
        self.max_cost, self.max_tokens, self.max_time = max_cost, max_tokens, max_time
        self.name = name or f"{self.kind}_agent"
        self.description = description or self.default_description
        self.memory: list[Step] = []  # every step since the last reset, across runs
        self._task: asyncio.Task[Run] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._interrupting = False
        self._system_text = ""
        self._caller: Callable[[_CallerJob], None] | None = None  # runs approvers in the sync caller's thread
        self._clock = _WorkClock(None)

    # -- what subclasses provide -----------------------------------------------------------------

    def system_prompt(self) -> str:
        raise NotImplementedError

    async def _request(self, messages: list[Message], on_delta: Callable[[str], None] | None, final: bool) -> Any:
        """Ask the model for the next action (`final`: the last, answer-only request)."""
        raise NotImplementedError

    async def _act(self, step: ActionStep, reply: Any, final: bool) -> Any:
        """Carry out the reply's action, filling `step`; return the final answer or NO_ANSWER."""
        raise NotImplementedError

    def _step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        """How an action step reads back to the model (`as_text`: no tool-role messages)."""
        raise NotImplementedError

    def _step_summary(self, step: ActionStep) -> str:
        """One compact line for a step that fell out of the recent window."""
        raise NotImplementedError

    def _apply_edit(self, step: ActionStep, text: str) -> None:
        """The reviewer changed the action: make `text` the action that runs (and is recorded)."""
        raise NotImplementedError

    def _decline(self, step: ActionStep, reason: str) -> None:
        """The reviewer skipped the action: record it as not run and tell the model why."""
        raise NotImplementedError

    async def _prepare(self, variables: dict[str, Any], reset: bool) -> dict[str, str]:
        """Make the variables available to the actions; return name -> preview for the prompt."""
        return {name: _preview(value) for name, value in variables.items()}

    # -- running ---------------------------------------------------------------------------------

    @overload
    def run(self, task: str, *, variables: dict[str, Any] | None = ..., reset: bool = ...,
            stream: Literal[False] = ...) -> Run: ...

    @overload
    def run(self, task: str, *, variables: dict[str, Any] | None = ..., reset: bool = ...,
            stream: Literal[True]) -> Iterator[Event]: ...

    def run(self, task: str, *, variables: dict[str, Any] | None = None, reset: bool = True,
            stream: bool = False) -> Run | Iterator[Event]:
        """Run the task to the end and return the Run; `stream=True` yields events as they happen.

        Ctrl-C (Kernel > Interrupt) interrupts the agent: the run comes back with
        state "interrupted" and the steps done so far.
        """
        if stream:
            return self._stream_sync(task, variables, reset)
        finished: Run | None = None
        for event in self._stream_sync(task, variables, reset):  # the queue also carries approver calls
            if isinstance(event, RunCompleted):
                finished = event.run
        assert finished is not None
        return finished

    async def arun(self, task: str, *, variables: dict[str, Any] | None = None, reset: bool = True) -> Run:
        return await self._start(task, variables, reset, None)

    async def astream(self, task: str, *, variables: dict[str, Any] | None = None,
                      reset: bool = True) -> AsyncIterator[Event]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        running = asyncio.ensure_future(self._start(task, variables, reset, events.put_nowait))
        running.add_done_callback(lambda _: events.put_nowait(_DONE))
        try:
            while (event := await events.get()) is not _DONE:
                yield event
            running.result()
        finally:
            if not running.done():  # the consumer stopped listening: stop the run too
                self.interrupt()
                await asyncio.wait([running])

    def _stream_sync(self, task: str, variables: dict[str, Any] | None, reset: bool) -> Iterator[Event]:
        """Events from the background loop. Ctrl-C while waiting interrupts the run and the stream
        goes on, so the stopped step and RunCompleted still arrive; a second Ctrl-C stops waiting."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = _aio.submit(self._start(task, variables, reset, events.put, events.put))
        future.add_done_callback(lambda _: events.put(_DONE))
        wait = True
        try:
            while (event := self._next_event(events)) is not _DONE:
                yield event
            future.result()
        except KeyboardInterrupt:
            wait = False  # the user insists: the run winds down in the background
            raise
        finally:
            if not future.done():
                self.interrupt()
                if wait:
                    future.exception()  # so the agent can run again as soon as this returns

    def _next_event(self, events: queue.SimpleQueue[Any]) -> Any:
        while True:
            try:
                item = events.get()
            except KeyboardInterrupt:
                self.interrupt()
                item = events.get()
            if not isinstance(item, _CallerJob):
                return item
            item.run_here(self)

    async def aclose(self) -> None:
        """Stop what the agent started: the python_interpreter tool's sandbox (add_base_tools)."""
        for owned in self._owned_tools:
            if hasattr(owned, "aclose"):
                await owned.aclose()

    def _fork(self, sandbox: Any = None) -> Any:
        """A copy for one task of a batch: the same model, tools and settings; its own memory and run state."""
        twin = copy.copy(self)
        twin.memory = []
        twin._task = twin._task_loop = None
        twin._interrupting = False
        return twin

    def close(self) -> None:
        _aio.run_sync(self.aclose())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def run_many(self, tasks: Iterable[Any], *, concurrency: int = 4, variables: dict[str, Any] | None = None,
                 progress: bool = True) -> list[Run]:
        """Run every task, `concurrency` at a time, each on its own copy of this agent; runs in input order."""
        from ._many import run_many

        return run_many(self, tasks, concurrency=concurrency, variables=variables, progress=progress)

    async def arun_many(self, tasks: Iterable[Any], *, concurrency: int = 4,
                        variables: dict[str, Any] | None = None, progress: bool = True) -> list[Run]:
        from ._many import arun_many

        return await arun_many(self, tasks, concurrency=concurrency, variables=variables, progress=progress)

    def interrupt(self) -> None:
        """Stop the run in progress (from any thread); it ends with state "interrupted"."""
        task, loop = self._task, self._task_loop
        if task is None or loop is None or task.done():
            return
        self._interrupting = True
        loop.call_soon_threadsafe(task.cancel)

    async def _start(self, task: str, variables: dict[str, Any] | None, reset: bool, sink: Sink | None,
                     caller: Callable[[_CallerJob], None] | None = None) -> Run:
        if not isinstance(task, str) or not task.strip():
            raise ValueError("the task must be a non-empty string saying what to do")
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"agent {self.name!r} is already running; wait for it or call interrupt()")
        self._interrupting = False
        self._caller = caller
        self._task_loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._execute(task, dict(variables or {}), reset, sink))
        with _gc.runs_in_progress():
            return await self._task

    async def _execute(self, task: str, variables: dict[str, Any], reset: bool, sink: Sink | None) -> Run:
        # Once per run (tools and instructions are fixed now), inside the task so that an interrupt
        # while it is built (asking litellm about the model can take seconds) is not lost.
        self._system_text = self._full_system_prompt()
        run = Run(task=task, agent=self.kind, model=_model_name(self.model))
        started = time.perf_counter()
        self._clock = _WorkClock(self.max_time)
        current: list[ActionStep] = []  # the step in progress, kept if the run is interrupted
        if sink is not None:
            sink(RunStarted(run))
        try:
            if reset:
                self.memory.clear()
            previews = await self._prepare(variables, reset)
            self._record(run, TaskStep(task, previews), sink)
            await self._loop(run, sink, current)
        except asyncio.CancelledError:
            if not self._interrupting:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            run.state = "interrupted"
            self._abandon(run, current, "interrupted", sink)
        except _RunEnded as ended:
            run.state, run.error = ended.state, ended.reason
            # A reviewer's stop is the step's review (its header says it), not the step's error.
            self._abandon(run, current, None if ended.state == "stopped" else ended.reason, sink)
        except Exception as exc:  # the run records why it stopped; the caller decides what to do
            run.state, run.error = "error", f"{type(exc).__name__}: {exc}"
            self._abandon(run, current, run.error, sink)
        run.duration = time.perf_counter() - started - self._clock.waited  # not the wait for the reviewer
        if sink is not None:
            sink(RunCompleted(run))
        return run

    def _abandon(self, run: Run, current: list[ActionStep], reason: str | None, sink: Sink | None) -> None:
        """Keep the step that was in progress when the run stopped, marked with why."""
        if current:
            if reason is not None:
                current[0].error = reason
            self._record(run, current[0], sink)
            current.clear()

    async def _loop(self, run: Run, sink: Sink | None, current: list[ActionStep]) -> None:
        first = len([s for s in self.memory if isinstance(s, ActionStep)]) + 1
        for index in range(first, first + self.max_steps):
            if self.planning_interval and (index - first) % self.planning_interval == 0:
                await self._plan(run, sink, index)
            answer = await self._step(run, sink, current, index, final=False)
            if answer is not NO_ANSWER:
                self._finish(run, sink, answer, "success")
                return
        answer = await self._step(run, sink, current, first + self.max_steps, final=True)
        self._finish(run, sink, None if answer is NO_ANSWER else answer, "max_steps")

    async def _step(self, run: Run, sink: Sink | None, current: list[ActionStep], index: int, final: bool) -> Any:
        self._check_budget(run)
        step = ActionStep(index=index)
        current[:] = [step]
        if sink is not None:
            sink(StepStarted(index))
        started, waited = time.perf_counter(), self._clock.waited
        messages = self._messages()
        if final:
            messages.append({"role": "user", "content": self._max_steps_prompt})
        reply = await self._request(messages, _delta_sink(sink, index), final)
        step.model_output = reply.content or ""
        step.usage = reply.usage
        self._spend(run, reply.usage)
        answer = await self._act_in_time(run, step, reply, final)
        if answer is NO_ANSWER and final and not step.tool_calls and step.code is None:
            answer = step.model_output.strip() or NO_ANSWER  # a plain-text last word is the best answer left
        if answer is not NO_ANSWER and not final:
            rejection = await self._check_answer(answer, run)
            if rejection is not None:
                self._reject_answer(step, _prompts.CHECK_FAILED.format(reason=rejection))
                answer = NO_ANSWER
        step.is_final = answer is not NO_ANSWER
        repeats = 0 if step.is_final else _repeats(run.action_steps, step)
        if repeats == REPEAT_NOTE_AT:
            step.observation = _join(step.observation, _prompts.REPEATING.format(times=repeats))
        step.duration = time.perf_counter() - started - (self._clock.waited - waited)  # not the review's wait
        current.clear()
        self._record(run, step, sink)
        if repeats >= STUCK_AT:
            what = f"the error {step.error}" if step.error else "the same action"
            raise _RunEnded("stuck", f"stuck: {what} {repeats} times in a row; the run was stopped")
        return answer

    async def _act_in_time(self, run: Run, step: ActionStep, reply: Any, final: bool) -> Any:
        """`_act`, stopped when max_time runs out while it runs: the run ends budget_exceeded."""
        answer = NO_ANSWER
        try:
            with self._clock.bounding():
                answer = await self._act(step, reply, final)
        except asyncio.CancelledError:
            if self._interrupting or not self._clock.expired:
                raise
        if self._clock.expired and not self._interrupting:  # (an action that swallowed the cancel also ends here)
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise _RunEnded("budget_exceeded", f"budget used up during step {step.index}, whose action was "
                            f"stopped (max_time {self._clock.limit:g} s): {self._spent(run)}")
        return answer

    async def _plan(self, run: Run, sink: Sink | None, index: int) -> None:
        self._check_budget(run)
        messages = self._messages(as_text=True) + [{"role": "user", "content": _prompts.PLANNING}]
        reply = await self.model.agenerate(messages, on_delta=_delta_sink(sink, index))
        self._spend(run, reply.usage)
        self._record(run, PlanningStep(plan=(reply.content or "").strip(), usage=reply.usage,
                                       duration=reply.duration), sink)

    def _spend(self, run: Run, usage: Usage) -> None:
        run.usage += usage
        name = _model_name(self.model)
        if self.max_cost is not None and usage.total_tokens and not usage.cost and name not in _unpriced_said:
            _unpriced_said.add(name)
            warnings.warn(f"litellm has no price for {name}: its cost counts as $0, so max_cost cannot stop this "
                          "run; set max_tokens to cap it", UnpricedModelWarning, stacklevel=2)

    def _check_budget(self, run: Run) -> None:
        """Before each model call: stop when a budget is used up (the steps so far are kept)."""
        spent, elapsed = run.usage, self._clock.elapsed()
        over = [
            f"{label} {shown(used)} of {shown(limit)}"
            for label, used, limit, shown in (
                ("max_cost", spent.cost, self.max_cost, lambda v: f"${v:.4f}"),
                ("max_tokens", spent.total_tokens, self.max_tokens, lambda v: f"{v:,}"),
                ("max_time", elapsed, self.max_time, lambda v: f"{v:.1f} s"),
            )
            if limit is not None and used >= limit
        ]
        if over:
            raise _RunEnded("budget_exceeded",
                            f"budget used up before the next model call ({'; '.join(over)}): {self._spent(run)}")

    def _spent(self, run: Run) -> str:
        return (f"spent ${run.usage.cost:.4f}, {run.usage.total_tokens:,} tokens, "
                f"{self._clock.elapsed():.1f} s of work")

    async def _review(self, step: ActionStep) -> bool:
        """Show the action to the reviewer, if there is one: True to run it (maybe edited), False if
        skipped. A stop ends the run, keeping this step as not run."""
        if self.approve is None:
            return True
        original = _review.proposal(step)
        decision = await self._decide(step)
        if decision.action == "stop":
            step.review = Review("stop", reason=decision.reason)
            raise _RunEnded("stopped", "stopped by the reviewer" + (f": {decision.reason}" if decision.reason else ""))
        if decision.action == "skip":
            step.review = Review("skip", reason=decision.reason)
            self._decline(step, decision.reason)
            return False
        if decision.action == "edit" and (decision.code or "").strip() != original.strip():
            step.review = Review("edit", original=original)
            self._apply_edit(step, decision.code or "")
        else:
            step.review = Review("run")
        return True

    async def _decide(self, step: ActionStep) -> _review.Decision:
        approve = self.approve
        assert approve is not None
        if inspect.iscoroutinefunction(approve):
            with self._clock.paused():  # the reviewer's thinking time is not the agent's working time
                return _review.checked(await approve(step))
        decision = await self.ask_user(approve, step)
        return _review.checked(await decision if inspect.isawaitable(decision) else decision)

    async def ask_user(self, ask: Callable[[Any], Any], arg: Any) -> Any:
        """`ask(arg)` where the user is: in the sync API's calling thread (input() and notebook
        widgets work there), else in a worker thread. The wait is not the run's working time."""
        with self._clock.paused():
            if self._caller is not None:  # the sync API: the caller's thread is waiting on the event queue
                job = _CallerJob(ask, arg)
                self._caller(job)
                return await asyncio.wrap_future(job.future)
            return await asyncio.to_thread(ask, arg)

    async def _check_answer(self, answer: Any, run: Run) -> str | None:
        """None when every check passes, else the reason to show the model."""
        for check in self.final_answer_checks:
            label = getattr(check, "__name__", repr(check))
            try:
                verdict = check(answer, run)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception as exc:  # the check's message is the feedback
                return f"check {label} failed: {exc}"
            if not verdict:
                return f"check {label} returned {verdict!r}"
        return None

    def _reject_answer(self, step: ActionStep, feedback: str) -> None:
        """A final answer failed a check: tell the model why, so it can fix it and go on."""
        step.observation = _join(step.observation, feedback)

    def _finish(self, run: Run, sink: Sink | None, answer: Any, state: Literal["success", "max_steps"]) -> None:
        run.output, run.state = answer, state
        self._record(run, FinalAnswerStep(answer), sink)

    def _record(self, run: Run, step: Step, sink: Sink | None) -> None:
        self.memory.append(step)
        run.steps.append(step)
        for callback in self.step_callbacks:
            callback(step, run)
        if sink is not None:
            sink(StepCompleted(step))

    # -- what the model sees ---------------------------------------------------------------------

    def _messages(self, as_text: bool = False) -> list[Message]:
        """System prompt, then memory. Action steps older than `keep_steps` shrink to one line each
        in a single summary message (the oldest drop out), so a long run's prompt stops growing.

        Steps fold in blocks of _FOLD_BLOCK, so the prompt's prefix stays the same for several
        steps in a row and a model server's prompt cache (llama.cpp's KV cache, providers' prompt
        caching) keeps serving it."""
        actions = [s for s in self.memory if isinstance(s, ActionStep)]
        folded = max(0, len(actions) - self.keep_steps) // _FOLD_BLOCK * _FOLD_BLOCK
        recent = {id(s) for s in actions[folded:]}
        summarised = {id(s) for s in actions[:folded][-_SUMMARY_LINES:]}
        plans = [s for s in self.memory if isinstance(s, PlanningStep)]
        messages: list[Message] = [{"role": "system", "content": self._system_text}]
        summary: list[str] = []
        seen_task = False
        for step in [*self.memory, None]:  # None flushes a trailing summary
            if isinstance(step, ActionStep) and id(step) not in recent:
                if id(step) in summarised:
                    summary.append(self._step_summary(step))
                continue
            if summary:
                messages.append({"role": "user", "content": _prompts.EARLIER_STEPS.format(summary="\n".join(summary))})
                summary = []
            if isinstance(step, TaskStep):
                messages.append({"role": "user", "content": self._task_text(step, seen_task)})
                seen_task = True
            elif isinstance(step, PlanningStep) and step is plans[-1]:  # older plans are superseded
                messages.append({"role": "assistant", "content": _prompts.PLAN_HEADER.format(plan=step.plan)})
                messages.append({"role": "user", "content": _prompts.PLAN_FOLLOW})
            elif isinstance(step, ActionStep):
                messages.extend(self._step_messages(step, as_text))
                if step.images and not as_text and step is actions[-1]:  # figures go with the next observation
                    messages[-1] = {**messages[-1], "content": _with_images(messages[-1]["content"], step.images)}
        return _merge_consecutive(messages)

    def _full_system_prompt(self) -> str:
        prompt = self.system_prompt()
        if self.instructions:
            prompt += _prompts.INSTRUCTIONS.format(instructions=self.instructions.strip())
        return prompt

    def _task_text(self, step: TaskStep, follow_up: bool) -> str:
        text = (_prompts.NEW_TASK if follow_up else _prompts.TASK).format(task=step.task)
        if step.variables:
            listed = "\n".join(f"- {name}: {preview}" for name, preview in step.variables.items())
            text += _prompts.TASK_VARIABLES.format(variables=listed)
        return text

    def _observation_text(self, text: str) -> str:
        return _prompts.OBSERVATION.format(observation=text)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} model={_model_name(self.model)!r} tools={list(self.tools)}>"


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail of long text and say how much was cut (errors hide in the tail)."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail:]}"


def _join(*parts: str) -> str:
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


def _repeats(previous: list[ActionStep], step: ActionStep) -> int:
    """How many times in a row, ending with `step`, the same error or the same action came up."""

    def run_length(key: Callable[[ActionStep], str | None]) -> int:
        mine = key(step)
        if mine is None:
            return 0
        count = 1
        for earlier in reversed(previous):
            if key(earlier) != mine:
                break
            count += 1
        return count

    return max(run_length(lambda s: s.error), run_length(_action_key))


def _action_key(step: ActionStep) -> str | None:
    if step.review is not None and step.review.original is not None:
        return step.review.original.strip()  # what the model proposed, even if the reviewer changed it
    if step.code is not None:
        return step.code.strip()
    if step.tool_calls:
        return json.dumps([[c.name, c.arguments] for c in step.tool_calls], sort_keys=True, default=repr)
    return None


def _delta_sink(sink: Sink | None, index: int) -> Callable[[str], None] | None:
    if sink is None:
        return None
    return lambda text: sink(TextDelta(index, text))


def _as_model(model: Any) -> Any:
    """A Model from a model name; anything else with `agenerate` (a Model, a test double) as is."""
    if model is None or isinstance(model, str):
        from ..models import as_model

        return as_model(model)
    if not callable(getattr(model, "agenerate", None)):
        raise TypeError(f"model must be a model name (e.g. 'openai/gpt-4o-mini') or an agent_kernel Model, "
                        f"got {model!r}")
    return model


def _model_name(model: Any) -> str:
    return str(getattr(model, "model_id", None) or type(model).__name__)


def _preview(value: Any) -> str:
    """The codec's short description of a value (type, shape, columns), as the model sees it."""
    from ..sandbox._codec import describe

    return describe(value)
