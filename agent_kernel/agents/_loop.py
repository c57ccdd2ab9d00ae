"""The loop both agents share: ask the model, act, observe, until a final answer or the step limit.

Everything runs as one asyncio task so `interrupt()` can cancel whatever is in progress (a model
call, a sandbox action, tool calls) and still hand back the run with the steps done so far. The
other concerns live beside it: what the model sees (`_context`), what a run may spend
(`_limits`), the agent's settings (`_options`) and the sync API over this async core (`_sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import reprlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

from .. import _aio, _gc
from .. import review as _review
from ..review import Decision
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
)
from ..observation import FrameFacts, frame_facts, spoken_list
from ..tools import Tool, as_tool
from . import _asked, _context, _evidence, _prompts, _sync
from ._context import Message
from ._limits import Budget, Limits, _RunEnded
from ._options import AgentOptions
from ._variables import describe_variable

if TYPE_CHECKING:
    from ..sandbox import SandboxLike, SandboxPool

Sink = Callable[[Event], None]


class _NoAnswer:
    """Marks an action that did not end the run (None is a valid final answer)."""

    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Any = _NoAnswer()
_DONE = object()
REPEAT_NOTE_AT = 3  # the same error or action this many times in a row: the model is told
STUCK_AT = 4  # ... and this many times ends the run as "stuck"
SENT_BACK = "final answer sent back: "  # a step's error when an answer check sent its answer back
UNCOMPUTED = SENT_BACK + "it states numbers that no output showed"
TYPED = SENT_BACK + "its value was typed into the code, not computed"
GUESSED = SENT_BACK + "it names a value of the data that no output showed"
MAX_SEND_BACKS = 2  # answers a run sends back, each for another reason; then one stands, its doubts recorded


def _short(value: Any) -> str:
    """A value as the model is reminded of it: its repr, cut."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    return short.repr(value)


class MultiStepAgent:
    """The shared loop. Subclasses say how a reply becomes an action and how a step reads back."""

    kind: ClassVar[Literal["code", "tools"]]
    default_description: ClassVar[str]  # what a manager agent reads when this agent is its tool
    _max_steps_prompt: ClassVar[str]  # the last request when the steps are used up
    _send_back: ClassVar[_prompts.SendBack | None] = None  # the words when an answer goes back; None: never

    def __init__(self, model: Any, tools: Iterable[Any] = (), **options: Any) -> None:
        """Args:
            model: a model name (litellm's, e.g. "openai/gpt-4o-mini") or a Model (anything with
                `agenerate`).
            tools: Tools, @tool functions, typed callables, or other agents.
            **options: AgentOptions' fields (max_steps, review, max_cost, ...; see AgentOptions).
        """
        try:
            self.options = AgentOptions(**options)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc):
                raise
            raise TypeError(f"{type(self).__name__}: {exc}; the options are AgentOptions' fields") from None
        self.model = _as_model(model)
        self.tools: dict[str, Tool] = {}
        for t in tools:
            converted = as_tool(t)
            if converted.name in self.tools:
                raise ValueError(f"two tools are named {converted.name!r}; give one another name (@tool(name=...))")
            self.tools[converted.name] = converted
        self._owned_tools: list[Any] = []  # tools this agent made (add_base_tools) and so must close
        if self.options.add_base_tools:
            from ..base_tools import base_tools

            for base in base_tools(self.kind):
                if base.name not in self.tools:  # the user's own tool of that name wins
                    self.tools[base.name] = base
                    self._owned_tools.append(base)
        self.final_answer_checks = list(self.options.final_answer_checks)
        self.step_callbacks = list(self.options.step_callbacks)
        # review=True asks the analyst (a widget prompt in a notebook, else input()); approve= is a script's reviewer
        self.approve: _review.Approver | None = self.options.approve or (
            _review.interactive if self.options.review else None)
        self.name = self.options.name or f"{self.kind}_agent"
        self.description = self.options.description or self.default_description
        self.memory: list[Step] = []  # every step since the last reset, across runs
        self._task: asyncio.Task[Run] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._interrupting = False
        self._system_text = ""
        self._frames: dict[str, FrameFacts] = {}  # the DataFrames the tasks were given (hints and checks read them)
        self._caller: _sync.Caller | None = None  # runs approvers in the sync caller's thread
        self._budget: Budget | None = None  # the run in progress's

    @property
    def model_name(self) -> str:
        """The model's name as runs record it."""
        return str(getattr(self.model, "model_id", None) or type(self.model).__name__)

    @property
    def limits(self) -> Limits:
        """What each run may spend unless it is given its own (`run(task, limits=...)`)."""
        return self.options.limits

    # -- what subclasses provide -----------------------------------------------------------------

    def system_prompt(self) -> str:
        raise NotImplementedError

    async def _request(self, messages: list[Message], on_delta: Callable[[str], None] | None, final: bool,
                       sampling: dict[str, float]) -> Any:
        """Ask the model for the next action (`final`: the last, answer-only request); `sampling` goes
        to `agenerate` as it is (a retry temperature, or nothing)."""
        raise NotImplementedError

    async def _act(self, step: ActionStep, reply: Any, final: bool) -> Any:
        """Carry out the reply's action, filling `step`; return the final answer or NO_ANSWER."""
        raise NotImplementedError

    def step_messages(self, step: ActionStep, as_text: bool) -> list[Message]:
        """How an action step reads back to the model (`as_text`: no tool-role messages)."""
        raise NotImplementedError

    def step_summary(self, step: ActionStep) -> str:
        """One compact line for a step that fell out of the recent window."""
        raise NotImplementedError

    def variables_place(self) -> str:
        """Where the task's variables are defined, as the task message says it ("": nowhere)."""
        raise NotImplementedError

    def table_named(self, run: Run, group: str) -> str | None:
        """The variable that last held a table per `group` in the run (code), to name in a send-back."""
        return None

    def answer_typed_in(self, step: ActionStep) -> str | None:
        """The final answer as `step`'s action wrote it out, where the action could have passed what
        computed it (code); None: computed, or an agent whose answers are always written out."""
        return None

    def _apply_edit(self, step: ActionStep, text: str) -> None:
        """The reviewer changed the action: make `text` the action that runs (and is recorded)."""
        raise NotImplementedError

    def _decline(self, step: ActionStep, reason: str) -> None:
        """The reviewer skipped the action: record it as not run and tell the model why."""
        raise NotImplementedError

    async def _prepare(self, variables: dict[str, Any], reset: bool) -> dict[str, str]:
        """Make the variables available to the actions; return name -> preview for the prompt."""
        given = frame_facts(variables)
        self._frames = given if reset else {**self._frames, **given}
        return {name: describe_variable(value, name) for name, value in variables.items()}

    def new_run(self, sandbox: SandboxLike | None = None) -> MultiStepAgent:
        """A copy for one more run beside this one (a task of a batch): the same model, tools and
        settings; its own memory and run state. `sandbox`: where a code agent's copy runs its
        actions (its owner closes it); agents that run no code take None."""
        twin = copy.copy(self)
        twin.memory = []
        twin._task = twin._task_loop = None
        twin._interrupting = False
        twin._budget = None
        twin._frames = {}
        return twin

    def sandbox_pool(self, size: int, total: int) -> SandboxPool | None:
        """Sandboxes for `total` copies of this agent, `size` at a time (None: it runs no code)."""
        return None

    # -- running ---------------------------------------------------------------------------------

    @overload
    def run(self, task: str, *, variables: dict[str, Any] | None = ..., reset: bool = ...,
            limits: Limits | None = ..., stream: Literal[False] = ...) -> Run: ...

    @overload
    def run(self, task: str, *, variables: dict[str, Any] | None = ..., reset: bool = ...,
            limits: Limits | None = ..., stream: Literal[True]) -> Iterator[Event]: ...

    def run(self, task: str, *, variables: dict[str, Any] | None = None, reset: bool = True,
            limits: Limits | None = None, stream: bool = False) -> Run | Iterator[Event]:
        """Run the task to the end and return the Run; `stream=True` yields events as they happen.

        `limits`: what this run may spend (default: the agent's own, from its options).
        Ctrl-C (Kernel > Interrupt) interrupts the agent: the run comes back with
        state "interrupted" and the steps done so far.
        """
        events = _sync.stream(lambda sink, caller: self._start(task, variables, reset, limits, sink, caller),
                              self.interrupt)
        if stream:
            return events
        finished: Run | None = None
        for event in events:  # the queue also carries approver calls
            if isinstance(event, RunCompleted):
                assert isinstance(event.run, Run)  # the loop makes memory.Run
                finished = event.run
        assert finished is not None
        return finished

    async def arun(self, task: str, *, variables: dict[str, Any] | None = None, reset: bool = True,
                   limits: Limits | None = None) -> Run:
        return await self._start(task, variables, reset, limits, None)

    async def astream(self, task: str, *, variables: dict[str, Any] | None = None, reset: bool = True,
                      limits: Limits | None = None) -> AsyncIterator[Event]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        running = asyncio.ensure_future(self._start(task, variables, reset, limits, events.put_nowait))
        running.add_done_callback(lambda _: events.put_nowait(_DONE))
        try:
            while (event := await events.get()) is not _DONE:
                yield event
            running.result()
        finally:
            if not running.done():  # the consumer stopped listening: stop the run too
                self.interrupt()
                await asyncio.wait([running])

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

    async def aclose(self) -> None:
        """Stop what the agent started: the python_interpreter tool's sandbox (add_base_tools)."""
        for owned in self._owned_tools:
            if hasattr(owned, "aclose"):
                await owned.aclose()

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

    async def _start(self, task: str, variables: dict[str, Any] | None, reset: bool, limits: Limits | None,
                     sink: Sink | None, caller: _sync.Caller | None = None) -> Run:
        if not isinstance(task, str) or not task.strip():
            raise ValueError("the task must be a non-empty string saying what to do")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits(max_steps=..., max_cost=...), got {limits!r}")
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"agent {self.name!r} is already running; wait for it or call interrupt()")
        self._interrupting = False
        self._caller = caller
        self._task_loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._execute(task, dict(variables or {}), reset,
                                                         limits or self.limits, sink))
        with _gc.runs_in_progress():
            return await self._task

    async def _execute(self, task: str, variables: dict[str, Any], reset: bool, limits: Limits,
                       sink: Sink | None) -> Run:
        # Once per run (tools and instructions are fixed now), inside the task so that an interrupt
        # while it is built (asking litellm about the model can take seconds) is not lost.
        self._system_text = self._full_system_prompt()
        run = Run(task=task, agent=self.kind, model=self.model_name)
        started = time.perf_counter()
        budget = self._budget = Budget(limits, run, self.model_name)
        current: list[ActionStep] = []  # the step in progress, kept if the run is interrupted
        if sink is not None:
            sink(RunStarted(run))
        try:
            if reset:
                self.memory.clear()
            previews = await self._prepare(variables, reset)
            self._record(run, TaskStep(task, previews), sink)
            await self._loop(run, budget, sink, current)
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
        run.duration = time.perf_counter() - started - budget.waited  # not the wait for the reviewer
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

    async def _loop(self, run: Run, budget: Budget, sink: Sink | None, current: list[ActionStep]) -> None:
        first = len([s for s in self.memory if isinstance(s, ActionStep)]) + 1
        max_steps, every = budget.limits.max_steps, self.options.planning_interval
        for index in range(first, first + max_steps):
            if every and (index - first) % every == 0:
                await self._plan(run, budget, sink, index)
            answer = await self._step(run, budget, sink, current, index, final=False)
            if answer is not NO_ANSWER:
                self._finish(run, sink, answer, "success")
                return
        answer = await self._step(run, budget, sink, current, first + max_steps, final=True)
        self._finish(run, sink, None if answer is NO_ANSWER else answer, "max_steps")

    async def _step(self, run: Run, budget: Budget, sink: Sink | None, current: list[ActionStep], index: int,
                    final: bool) -> Any:
        budget.check()
        step = ActionStep(index=index)
        current[:] = [step]
        if sink is not None:
            sink(StepStarted(index))
        started, waited = time.perf_counter(), budget.waited
        messages = self._messages()
        if final:
            messages.append({"role": "user", "content": self._max_steps_prompt})
        reply = await self._request(messages, _delta_sink(sink, index), final, self._sampling(run))
        step.model_output = reply.content or ""
        step.usage = reply.usage
        budget.spend(reply.usage)
        answer = await self._act_in_time(budget, step, reply, final)
        if answer is NO_ANSWER and final and not step.tool_calls and step.code is None:
            answer = step.model_output.strip() or NO_ANSWER  # a plain-text last word is the best answer left
        if answer is not NO_ANSWER and not final:
            rejection = self._sent_back(answer, run, step) or await self._check_answer(answer, run)
            if rejection is not None:
                self._reject_answer(step, _prompts.CHECK_FAILED.format(reason=rejection))
                answer = NO_ANSWER
        step.is_final = answer is not NO_ANSWER
        repeats, alternating = (0, False) if step.is_final else _repeats(run.action_steps, step)
        if repeats == REPEAT_NOTE_AT:
            note = _prompts.ALTERNATING if alternating else _prompts.REPEATING
            step.observation = _context.join(step.observation, note.format(times=repeats + alternating))
        step.duration = time.perf_counter() - started - (budget.waited - waited)  # not the review's wait
        current.clear()
        self._record(run, step, sink)
        if repeats >= STUCK_AT:
            if alternating:
                raise _RunEnded("stuck", f"stuck: the same two attempts in turn, {repeats + 1} steps in a row; "
                                         "the run was stopped")
            what = f"the error {step.error}" if step.error else "the same action"
            raise _RunEnded("stuck", f"stuck: {what} {repeats} times in a row; the run was stopped")
        return answer

    def _sampling(self, run: Run) -> dict[str, float]:
        """`{"temperature": options.retry_temperature}` once the run's last two steps repeated the same
        error or action (greedy decoding would repeat it again), where the model takes a temperature
        and its own is lower; else nothing."""
        hot = self.options.retry_temperature
        steps = run.action_steps
        if hot is None or not steps or not getattr(self.model, "supports_temperature", False):
            return {}
        own = getattr(self.model, "temperature", None)
        if (own is not None and own >= hot) or _repeats(steps[:-1], steps[-1])[0] < 2:
            return {}
        return {"temperature": hot}

    async def _act_in_time(self, budget: Budget, step: ActionStep, reply: Any, final: bool) -> Any:
        """`_act`, stopped when max_time runs out while it runs: the run ends budget_exceeded."""
        answer = NO_ANSWER
        try:
            with budget.bounding():
                answer = await self._act(step, reply, final)
        except asyncio.CancelledError:
            if self._interrupting or not budget.expired:
                raise
        if budget.expired and not self._interrupting:  # (an action that swallowed the cancel also ends here)
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise _RunEnded("budget_exceeded", f"budget used up during step {step.index}, whose action was "
                            f"stopped (max_time {budget.limits.max_time:g} s): {budget.spent()}")
        return answer

    async def _plan(self, run: Run, budget: Budget, sink: Sink | None, index: int) -> None:
        budget.check()
        messages = self._messages(as_text=True) + [{"role": "user", "content": _prompts.PLANNING}]
        reply = await self.model.agenerate(messages, on_delta=_delta_sink(sink, index))
        budget.spend(reply.usage)
        self._record(run, PlanningStep(plan=(reply.content or "").strip(), usage=reply.usage,
                                       duration=reply.duration), sink)

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

    async def _decide(self, step: ActionStep) -> Decision:
        approve = self.approve
        assert approve is not None
        if inspect.iscoroutinefunction(approve):
            with self._paused():  # the reviewer's thinking time is not the agent's working time
                return _review.checked(await approve(step))
        decision = await self.ask_user(approve, step)
        return _review.checked(await decision if inspect.isawaitable(decision) else decision)

    async def ask_user(self, ask: Callable[[Any], Any], arg: Any) -> Any:
        """`ask(arg)` where the user is: in the sync API's calling thread (input() and notebook
        widgets work there), else in a worker thread. The wait is not the run's working time."""
        with self._paused():
            if self._caller is not None:  # the sync API: the caller's thread is waiting on the event queue
                job = _sync.CallerJob(ask, arg)
                self._caller(job)
                return await asyncio.wrap_future(job.future)
            return await asyncio.to_thread(ask, arg)

    def _paused(self) -> contextlib.AbstractContextManager[None]:
        """The run's clock stopped while the user is asked (no run in progress: nothing to stop)."""
        return self._budget.paused() if self._budget is not None else contextlib.nullcontext()

    def _sent_back(self, answer: Any, run: Run, step: ActionStep) -> str | None:
        """Why an answer goes back to a model that can compute: it is or holds NaN or an infinity, it
        is one value where the task asks for one per group, a name alone or an amount alone where it
        asks for both, a number or none of the values where it asks which of a text column's values,
        no amount or a whole table where it asks how many, it states numbers no output showed, the
        code typed in what it read off an output instead of passing what computed it, or it typed in
        one of the data's values that no output showed (a guess).
        At most MAX_SEND_BACKS times a run, never twice for the same reason: then the answer stands,
        and its record says what is doubtful about it. None to accept it."""
        words = self._send_back
        if words is None or not self.options.check_numbers:
            return None
        sent = {s.error for s in run.action_steps if (s.error or "").startswith(SENT_BACK)}
        if len(sent) >= MAX_SEND_BACKS:
            return None
        wrong = self._mismatch(answer, run)
        if wrong is not None and SENT_BACK + _asked.WHY[wrong.kind] not in sent:
            step.error = SENT_BACK + _asked.WHY[wrong.kind]
            told = dict(wrong.words)
            if wrong.kind == "one_value" and (held := self.table_named(run, told["group"])):
                told["held"] = f": {held}"  # the code's own name for the table
            return str(getattr(words, wrong.kind)).format(**told)
        unverified = _evidence.weigh(answer, run, step).unverified
        if unverified and UNCOMPUTED not in sent:
            step.error = UNCOMPUTED
            pronoun = "them" if len(unverified) > 1 else "it"
            return words.uncomputed.format(numbers=spoken_list(unverified), pronoun=pronoun)
        typed = self.answer_typed_in(step)
        if typed is not None and words.typed and TYPED not in sent and _evidence.read_off(answer, run):
            step.error = TYPED
            return words.typed.format(answer=typed if len(typed) <= 80 else typed[:77] + "...")
        if GUESSED not in sent and self._guessed(answer, run, step):
            step.error = GUESSED
            return words.uncomputed.format(numbers=_short(answer), pronoun="it")
        return None

    def _guessed(self, answer: Any, run: Run, step: ActionStep) -> bool:
        """One of a given DataFrame's text values, typed into the code, that no output showed: "East"
        after an output of 0, picked from the values the description of the data lists."""
        if not isinstance(answer, str) or self.answer_typed_in(step) is None:
            return False
        name = answer.strip().lower()
        listed = any(name == v.lower() for facts in self._frames.values() for values in facts.labels.values()
                     for v in values)
        return listed and _evidence.never_shown(answer.strip(), run, step)

    def _mismatch(self, answer: Any, run: Run) -> _asked.Mismatch | None:
        """How the answer is not the kind the run's task asks for, given its DataFrames (see _asked)."""
        return _asked.mismatch(answer, _short(answer), run.task, self._frames.values())

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
        step.observation = _context.join(step.observation, feedback)

    def _finish(self, run: Run, sink: Sink | None, answer: Any, state: Literal["success", "max_steps"]) -> None:
        run.output, run.state = answer, state
        evidence = _evidence.weigh(answer, run)
        steps = run.action_steps
        if steps and self.options.check_numbers and self._guessed(answer, run, steps[-1]):
            evidence.unverified.append(_short(answer))  # "unverified: 'East' was never computed"
        run.unverified = evidence.unverified
        wrong = self._mismatch(answer, run) if self.options.check_numbers and answer is not None else None
        run.mismatch = _asked.WHY[wrong.kind] if wrong is not None else ""
        self._record(run, FinalAnswerStep(answer, evidence.sources, evidence.unverified, run.mismatch), sink)

    def _record(self, run: Run, step: Step, sink: Sink | None) -> None:
        self.memory.append(step)
        run.steps.append(step)
        for callback in self.step_callbacks:
            callback(step, run)
        if sink is not None:
            sink(StepCompleted(step))

    # -- what the model sees (see _context) -------------------------------------------------------

    def _messages(self, as_text: bool = False) -> list[Message]:
        return _context.messages(self._system_text, self.memory, self, self.options.keep_steps, as_text)

    def _full_system_prompt(self) -> str:
        return _context.system_prompt(self.system_prompt(), self.options.instructions)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} model={self.model_name!r} tools={list(self.tools)}>"


def _repeats(previous: list[ActionStep], step: ActionStep) -> tuple[int, bool]:
    """How many times in a row, ending with `step`, the same error or the same action came up, and
    whether it is two of them in turn (A B A B: the count is the steps after the first)."""
    steps = [*previous, step]

    def trailing(key: Callable[[ActionStep], str | None], period: int) -> int:
        keys = [key(s) for s in steps]
        if keys[-1] is None or (period == 2 and (len(keys) < 2 or keys[-2] in (None, keys[-1]))):
            return 0
        count = period
        while count < len(keys) and keys[-1 - count] == keys[-1 - count + period]:
            count += 1
        return count if period == 1 else count - 1

    errors, actions = (lambda s: s.error), _action_key
    same = max(trailing(errors, 1), trailing(actions, 1))
    in_turn = max(trailing(errors, 2), trailing(actions, 2))
    return (same, False) if same >= in_turn else (in_turn, True)


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
