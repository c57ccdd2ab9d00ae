"""Models through litellm: one call shape for every provider, with streaming, usage, retries and
errors that say what to do.

litellm is imported on first use (it takes seconds; see `_litellm`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import _aio, _litellm
from .errors import AgentKernelError
from .records import ToolCall, Usage

DEFAULT_MODEL = "openai/gpt-4o-mini"  # used when no model is given and AGENT_KERNEL_MODEL is unset

# When a model sends tool-call arguments that are not a JSON object, ToolCall.arguments is
# {RAW_ARGUMENTS: "<the text it sent>"} so the agent can show the model its mistake.
RAW_ARGUMENTS = "__raw__"


class ModelError(AgentKernelError):
    """A model call failed; the message says why and what to do."""


class MissingCredentials(ModelError):
    """No API key, or the server rejected it."""


class ModelNotFound(ModelError):
    """The provider or the model name is unknown."""


class ModelRefused(ModelError):
    """The server rejected the request (bad request, content policy, context too long)."""


class ModelTimeout(ModelError):
    """No answer within the timeout, after retries."""


@dataclass
class ModelReply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    duration: float = 0.0
    finish_reason: str | None = None

    def as_message(self) -> dict[str, Any]:
        """The reply as an OpenAI-format assistant message, to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": _dump_arguments(c.arguments)}}
                for c in self.tool_calls
            ]
        return message


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """`text` up to the first stop sequence, for servers that ignore (or echo) `stop`."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    return text[: min(cuts)] if cuts else text


def parse_arguments(raw: str | None) -> dict[str, Any]:
    """Tool-call arguments as a dict; text that is not a JSON object is kept under RAW_ARGUMENTS."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {RAW_ARGUMENTS: raw}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: raw}


def _dump_arguments(arguments: dict[str, Any]) -> str:
    if set(arguments) == {RAW_ARGUMENTS}:
        return str(arguments[RAW_ARGUMENTS])
    return json.dumps(arguments)


def _is_api_error(error: Exception) -> bool:
    import openai  # litellm's exceptions all derive from openai's

    return isinstance(error, openai.APIError)


def _is_retryable(error: Exception) -> bool:
    litellm = _litellm.load()
    retryable = (
        litellm.RateLimitError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        litellm.APIConnectionError,
        litellm.Timeout,  # not a litellm.APIConnectionError (it derives from openai's)
    )
    return isinstance(error, retryable)


class Model:
    """A chat model, named as litellm names it ("openai/gpt-4o-mini", "anthropic/claude-...").

    `api_base` points at any OpenAI-compatible server ("openai/<name>" with a local URL). Rate
    limits, 5xx, timeouts and dropped connections are retried `num_retries` times with exponential
    backoff starting at `retry_delay` seconds. Other keyword arguments go to `litellm.acompletion`.
    `supports_stop` / `supports_temperature` / `supports_tools` / `supports_tool_choice` /
    `supports_vision` come from litellm; assign them to override a wrong guess. `supports_grammar`: the reply can be held to a llama.cpp GBNF grammar
    (the embedded `local/` provider; assign True for a llama.cpp server that reads `grammar`).
    """

    def __init__(
        self,
        model_id: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        timeout: float = 120.0,
        num_retries: int = 3,
        retry_delay: float = 1.0,
        **litellm_kwargs: Any,
    ) -> None:
        """Args:
            model_id: the model as litellm names it, with its provider ("openai/gpt-4o-mini"; "local/..."
                for the embedded llama.cpp).
            api_base: an OpenAI-compatible endpoint (a local server, a proxy); None: the provider's.
            api_key: the key; None: litellm reads the provider's environment variable.
            temperature: sampling temperature; None: the provider's default.
            timeout: seconds for one attempt.
            num_retries: attempts after the first on rate limits, 5xx, timeouts, dropped connections.
            retry_delay: seconds before the first retry (doubling after each).
            **litellm_kwargs: passed to `litellm.acompletion` as they are.
        """
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a model name like {DEFAULT_MODEL!r}, got {model_id!r}")
        self.model_id = model_id.strip()
        self.api_base = api_base
        self.api_key = api_key
        self.temperature = temperature
        self.timeout = timeout
        self.num_retries = num_retries
        self.retry_delay = retry_delay
        self.litellm_kwargs = litellm_kwargs

    def __repr__(self) -> str:
        base = f", api_base={self.api_base!r}" if self.api_base else ""
        return f"Model({self.model_id!r}{base})"  # never the key

    @cached_property
    def _provider(self) -> tuple[str, str]:
        """(model name, provider) as litellm resolves them."""
        litellm = _litellm.load()
        if self.model_id.startswith("local/"):  # the embedded provider registers itself on first use
            from .local_model import register

            register()
        try:
            name, provider, _, _ = litellm.get_llm_provider(self.model_id, api_base=self.api_base)
        except litellm.BadRequestError:
            raise ModelNotFound(
                f"litellm does not know which provider serves {self.model_id!r}: prefix the name with one, "
                f"e.g. 'openai/{self.model_id}' or 'anthropic/{self.model_id}' (https://docs.litellm.ai/docs/providers)"
            ) from None
        return name, provider

    @cached_property
    def _supported_params(self) -> frozenset[str]:
        name, provider = self._provider
        params = _litellm.load().get_supported_openai_params(model=name, custom_llm_provider=provider)
        return frozenset(params or ())

    @cached_property
    def supports_stop(self) -> bool:
        return "stop" in self._supported_params

    @cached_property
    def supports_tools(self) -> bool:
        """Native function calling: litellm's model table decides for models it knows; for others
        (local servers) whether the provider accepts `tools`."""
        litellm = _litellm.load()
        if "tools" not in self._supported_params:
            return False
        try:
            litellm.get_model_info(self.model_id)
        except Exception:  # litellm raises a bare Exception for models missing from its table
            return True
        return bool(litellm.supports_function_calling(self.model_id))

    @cached_property
    def supports_temperature(self) -> bool:
        return "temperature" in self._supported_params

    @cached_property
    def supports_tool_choice(self) -> bool:
        """Whether a reply can be required to call a tool (OpenAI's `tool_choice`)."""
        return "tool_choice" in self._supported_params

    @cached_property
    def supports_grammar(self) -> bool:
        return self.model_id.startswith("local/")

    @cached_property
    def supports_vision(self) -> bool:
        """Whether the model takes images in its messages (litellm's model table; unknown: no)."""
        try:
            return bool(_litellm.load().supports_vision(model=self.model_id))
        except Exception:  # litellm raises a bare Exception for models missing from its table
            return False

    def _preflight(self) -> None:
        """Fail before any network call on an unknown provider or a key that is nowhere to be found."""
        self._provider  # noqa: B018 - resolving it raises ModelNotFound for an unknown provider
        if self.api_key is not None:
            return
        env = _litellm.load().validate_environment(self.model_id, api_base=self.api_base)
        missing = env.get("missing_keys") or []
        if missing:
            what = " and ".join(missing)
            argument = "api_base" if all(k.endswith("_BASE") for k in missing) else "api_key"
            hint = " (a server that needs no key accepts any, e.g. api_key='none')" if self.api_base else ""
            raise MissingCredentials(
                f"{self.model_id} needs {what}: set {what} in the environment "
                f"or pass {argument}=... to Model(...){hint}"
            )

    async def agenerate(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        on_delta: Callable[[str], None] | None = None,
        grammar: str | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> ModelReply:
        """One completion. With `on_delta` the reply streams and each new piece of text is passed to
        it as it arrives; the returned content is always cut at the first stop sequence. `grammar`
        (GBNF) holds the reply to a format where the model supports it, and is left out elsewhere;
        so is `tool_choice` ("required": the reply calls one or more of `tools`). `temperature`
        overrides the model's own for this call (an agent's retry after repeating itself)."""
        if not _litellm.loaded():  # a first import takes seconds: keep the shared loop responsive
            await asyncio.to_thread(_litellm.load)
        self._preflight()
        request = self._request(messages, tools, stop)
        if temperature is not None:
            request["temperature"] = temperature
        if grammar is not None and self.supports_grammar:
            request["grammar"] = grammar
        if tool_choice is not None and tools and self.supports_tool_choice:
            request["tool_choice"] = tool_choice
        started = time.monotonic()
        attempt = 0
        while True:
            streamed = _Stream(on_delta, stop)
            try:
                if on_delta is None:
                    reply = await self._complete(request)
                else:
                    reply = await self._stream(request, streamed)
                break
            except Exception as e:
                if not _is_api_error(e):  # a bug, or on_delta raising: not the model's doing
                    raise
                # A half-streamed reply cannot be retried: the caller has already shown its text.
                if attempt < self.num_retries and _is_retryable(e) and not streamed.emitted:
                    await asyncio.sleep(self.retry_delay * 2**attempt)
                    attempt += 1
                    continue
                raise self._translate(e, attempt) from e
        reply.content = cut_at_stop(reply.content, stop)
        reply.duration = time.monotonic() - started
        return reply

    def generate(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        on_delta: Callable[[str], None] | None = None,
        grammar: str | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> ModelReply:
        return _aio.run_sync(self.agenerate(messages, tools=tools, stop=stop, on_delta=on_delta, grammar=grammar,
                                            tool_choice=tool_choice, temperature=temperature))

    def _request(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, stop: list[str] | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            **self.litellm_kwargs,
            "model": self.model_id,
            "messages": messages,
            "timeout": self.timeout,
            "max_retries": 0,  # retried here, once, instead of also inside the OpenAI client
        }
        optional = {"api_base": self.api_base, "api_key": self.api_key, "temperature": self.temperature}
        request.update({k: v for k, v in optional.items() if v is not None})
        if tools:
            request["tools"] = tools
        if stop and self.supports_stop:
            request["stop"] = list(stop)
        return request

    async def _complete(self, request: dict[str, Any]) -> ModelReply:
        response = await _litellm.load().acompletion(**request)
        choice = response.choices[0]
        message = choice.message
        calls = [
            _tool_call(c.function.name, c.function.arguments, c.id) for c in message.tool_calls or ()
        ]
        content = message.content or ""
        return ModelReply(
            content=content,
            tool_calls=calls,
            usage=self._usage(getattr(response, "usage", None), request["messages"], content, calls),
            finish_reason=choice.finish_reason,
        )

    async def _stream(self, request: dict[str, Any], streamed: _Stream) -> ModelReply:
        response = await _litellm.load().acompletion(**request, stream=True, stream_options={"include_usage": True})
        calls: dict[int, dict[str, str]] = {}
        usage = finish_reason = None
        async for chunk in response:
            usage = getattr(chunk, "usage", None) or usage
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish_reason = choice.finish_reason or finish_reason
            delta = choice.delta
            if delta.content:
                streamed.add(delta.content)
            for part in delta.tool_calls or ():
                call = calls.setdefault(part.index or 0, {"id": "", "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                if part.function is not None:
                    call["name"] += part.function.name or ""
                    call["arguments"] += part.function.arguments or ""
        streamed.finish()
        tool_calls = [_tool_call(c["name"], c["arguments"], c["id"]) for _, c in sorted(calls.items())]
        return ModelReply(
            content=streamed.text,
            tool_calls=tool_calls,
            usage=self._usage(usage, request["messages"], streamed.text, tool_calls),
            finish_reason=finish_reason,
        )

    def _usage(self, usage: Any, messages: list[dict[str, Any]], content: str, calls: list[ToolCall]) -> Usage:
        """Tokens as the server counted them (litellm's count when it sent none), priced by litellm."""
        litellm = _litellm.load()
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        else:
            output = content + "".join(_dump_arguments(c.arguments) for c in calls)
            prompt = litellm.token_counter(model=self.model_id, messages=messages)
            completion = litellm.token_counter(model=self.model_id, text=output) if output else 0
        try:
            prompt_cost, completion_cost = litellm.cost_per_token(
                model=self.model_id, prompt_tokens=prompt, completion_tokens=completion
            )
            cost = float(prompt_cost + completion_cost)
        except Exception:  # litellm raises a bare Exception for models without a price
            cost = 0.0
        return Usage(input_tokens=prompt, output_tokens=completion, cost=cost)

    def _translate(self, error: Exception, retries: int) -> ModelError:
        """litellm's exception as ours, with what to do about it."""
        litellm = _litellm.load()
        detail = _server_message(error)
        where = f" at {self.api_base}" if self.api_base else ""
        if isinstance(error, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
            provider = self._provider[1]
            return MissingCredentials(
                f"{self.model_id}{where} rejected the API key ({detail}): set {provider.upper()}_API_KEY "
                "or pass a valid api_key=... to Model(...)"
            )
        if isinstance(error, litellm.NotFoundError):
            return ModelNotFound(
                f"{self.model_id!r} was not found{where} ({detail}): check the model name; it needs the "
                "provider prefix, e.g. 'openai/gpt-4o-mini' (https://docs.litellm.ai/docs/providers)"
            )
        if isinstance(error, (litellm.BadRequestError, litellm.UnprocessableEntityError)):
            return ModelRefused(f"{self.model_id}{where} refused the request: {detail}")
        tried = f" (tried {retries + 1} times)" if retries else ""
        if isinstance(error, litellm.Timeout):
            return ModelTimeout(
                f"{self.model_id}{where} did not answer within {self.timeout:g} s{tried}: "
                "raise Model(timeout=...) or try again later"
            )
        if isinstance(error, litellm.APIConnectionError):
            return ModelError(
                f"could not reach {self.model_id}{where}{tried}: {detail}; check api_base and the network"
            )
        if isinstance(error, litellm.RateLimitError):
            return ModelError(f"{self.model_id}{where} is rate-limiting requests{tried}: {detail}; wait and retry")
        return ModelError(f"{self.model_id}{where} failed{tried}: {detail}")


def _tool_call(name: str | None, arguments: str | None, call_id: str | None) -> ToolCall:
    return ToolCall(name=name or "", arguments=parse_arguments(arguments), id=call_id or "")


def _server_message(error: Exception) -> str:
    """The server's own words, without litellm's 'litellm.XError: ' prefixes."""
    message = str(getattr(error, "message", "") or error)
    while message.startswith("litellm.") and ": " in message:
        message = message.split(": ", 1)[1]
    return message.strip()


class _Stream:
    """Streamed text: passes on each new piece, holding back what could be the start of a stop
    sequence so the caller never sees text that the final content will not contain."""

    def __init__(self, on_delta: Callable[[str], None] | None, stop: list[str] | None) -> None:
        self._on_delta = on_delta
        self._stop = [s for s in stop or () if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""
        self._stopped = False
        self.emitted = 0

    @property
    def text(self) -> str:
        return self._text

    def add(self, piece: str) -> None:
        if self._stopped:
            return
        self._text += piece
        cut = cut_at_stop(self._text, self._stop)
        if len(cut) < len(self._text):
            self._text, self._stopped = cut, True
            self._emit(len(cut))
        else:
            self._emit(len(self._text) - self._hold)

    def finish(self) -> None:
        self._emit(len(self._text))

    def _emit(self, upto: int) -> None:
        if self._on_delta is not None and upto > self.emitted:
            self._on_delta(self._text[self.emitted : upto])
            self.emitted = upto


def as_model(model: str | Model | None) -> Model:
    """A Model from a Model, a litellm model name, or None (AGENT_KERNEL_MODEL, else DEFAULT_MODEL)."""
    if isinstance(model, Model):
        return model
    if model is None:
        return Model(os.environ.get("AGENT_KERNEL_MODEL") or DEFAULT_MODEL)
    if isinstance(model, str):
        return Model(model)
    raise TypeError(f"expected a Model or a model name like {DEFAULT_MODEL!r}, got {type(model).__name__}")
